"""The lexical side of the index, on disk, so that a question never loads the corpus.

`<data_dir>/lexical/<collection>/` holds

- `lexicon.sqlite`: one row per indexed paper, in the order papers entered the index
  (`seq`): its content hash, title, stemmed terms (ids into the `terms` table) and what it
  adds to the corpus-name map; that map is kept incrementally next to it (`plain`: in how
  many papers a word appears in lower case; `names`: every name spelling, by paper order);
- `bm25-<revision digest>/`: the BM25 matrix of one index revision (`data`, `indices`,
  `indptr`, `df` as .npy files, the paper ids as one UTF-8 blob with offsets), written once
  and memory-mapped when read, so a process touches only the pages of the terms it asks
  for. A query looks its terms up in SQLite; nothing is loaded per paper.

Scores are bm25s's "lucene" BM25 (k1 = 1.2, b = 0.75), computed the way bm25s computes
them (same float64 steps, stored as float32, query terms summed in order), so rankings are
the same as with an in-memory bm25s index over the same documents. SQLite FTS5 was the other
candidate; its bm25() differs from the scores this product's rankings were fitted with (no
side-by-side timing of it is in bench/).

The lexicon is a cache of the store: `PaperStore` updates it as it writes and reconciles it
with the store (paper ids and content hashes) when they disagree, e.g. after a killed ingest,
for an index built by an older version, or when another client wrote to a Chroma server.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .bm25 import K1, B, LexicalIndex, _Ids, _pack_ids, build_matrix
from .text import terms

__all__ = ["B", "K1", "CorpusNames", "LexicalIndex", "Lexicon", "LexiconDamaged", "build_matrix", "doc_text"]

log = logging.getLogger(__name__)

BUILD_FORMAT = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS terms (id INTEGER PRIMARY KEY, term TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS docs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    pid TEXT NOT NULL UNIQUE,
    pid_lower TEXT NOT NULL,
    hash TEXT NOT NULL,
    title TEXT NOT NULL,
    title_lower TEXT NOT NULL,
    terms BLOB NOT NULL,
    names TEXT NOT NULL,
    plain TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS docs_title ON docs (title_lower, seq);
CREATE TABLE IF NOT EXISTS plain (word TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS names (word TEXT NOT NULL, seq INTEGER NOT NULL, spelling TEXT NOT NULL,
                                  PRIMARY KEY (word, seq)) WITHOUT ROWID;
"""


def doc_text(title: str, abstract: str) -> str:
    """What BM25 indexes: the title counts twice."""
    return f"{title} {title} {abstract}"


class LexiconDamaged(Exception):
    pass


class Lexicon:
    """Per-paper terms and names in SQLite, BM25 builds beside it (see the module doc).

    Writers (under the data dir's write lock) call `upsert`/`remove`/`mark`; readers call
    `open_build`, `latest_build`, `name_for` and the title listing. Thread-safe."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._vocab: dict[str, int] | None = None
        self.lexicon_id = ""

    # --- SQLite ------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.folder / "lexicon.sqlite"

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=60, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM meta WHERE key='lexicon_id'").fetchone()
        if row is None:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('lexicon_id', ?)", (uuid.uuid4().hex,))
            row = db.execute("SELECT value FROM meta WHERE key='lexicon_id'").fetchone()
        self.lexicon_id = row[0]
        return db

    @property
    def db(self) -> sqlite3.Connection:
        with self._lock:
            if self._db is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                try:
                    self._db = self._connect()
                except sqlite3.DatabaseError as exc:
                    if "locked" in str(exc) or "readonly" in str(exc):
                        raise
                    self._move_aside(exc)
                    self._db = self._connect()
            return self._db

    def _move_aside(self, exc: Exception) -> None:
        broken = self.path.with_name(self.path.name + ".broken")
        try:
            self.path.replace(broken)
        except FileNotFoundError:
            pass
        for side in ("-wal", "-shm"):
            self.path.with_name(self.path.name + side).unlink(missing_ok=True)
        log.warning("the lexical index %s was damaged (%s); moved it to %s and rebuilding it from the index",
                    self.path, str(exc)[:120], broken.name)

    def reset(self, exc: Exception) -> None:
        """The SQLite file went bad while open: start a new one (it is rebuilt from the store)."""
        with self._lock:
            if self._db is not None:
                try:
                    self._db.close()
                except sqlite3.Error:
                    pass
            self._db = None
            self._vocab = None
            self._move_aside(exc)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @property
    def synced(self) -> str | None:
        """The index revision the papers here match ("" while a writer is changing them)."""
        return self.meta("synced")

    def mark(self, revision: str) -> None:
        self.set_meta("synced", revision)

    # --- papers in, papers out (writers) -------------------------------------------------------
    def doc_hashes(self) -> dict[str, str]:
        with self._lock:
            return dict(self.db.execute("SELECT pid, hash FROM docs"))

    def _term_vocab(self) -> dict[str, int]:
        n = self.db.execute("SELECT COUNT(*) FROM terms").fetchone()[0]
        if self._vocab is None or len(self._vocab) != n:
            self._vocab = dict(self.db.execute("SELECT term, id FROM terms"))
        return self._vocab

    def upsert(self, items: Iterable[tuple[str, str, str, str]]) -> None:
        """(paper id, content hash, title, abstract) per paper; a known id keeps its place."""
        from .analysis import name_spellings

        with self._lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                vocab = self._term_vocab()
                new_terms: list[tuple[int, str]] = []
                plain_delta: Counter = Counter()
                name_rows: list[tuple[str, int, str]] = []
                for pid, h, title, abstract in items:
                    toks = terms(doc_text(title, abstract))
                    ids = np.empty(len(toks), dtype=np.int32)
                    for j, t in enumerate(toks):
                        i = vocab.get(t)
                        if i is None:
                            i = vocab[t] = len(vocab)
                            new_terms.append((i, t))
                        ids[j] = i
                    names, plain = name_spellings(f"{title} {abstract}")
                    row = db.execute("SELECT seq, plain FROM docs WHERE pid=?", (pid,)).fetchone()
                    values = (pid.lower(), h, title, title.lower(), ids.tobytes(), json.dumps(names),
                              json.dumps(sorted(plain)))
                    if row is not None:
                        seq = row[0]
                        plain_delta.subtract(json.loads(row[1]))
                        db.execute("DELETE FROM names WHERE seq=?", (seq,))
                        db.execute("UPDATE docs SET pid_lower=?, hash=?, title=?, title_lower=?, terms=?, "
                                   "names=?, plain=? "
                                   "WHERE seq=?", (*values, seq))
                    else:
                        seq = db.execute("INSERT INTO docs (pid, pid_lower, hash, title, title_lower, terms, "
                                         "names, plain) "
                                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (pid, *values)).lastrowid
                    plain_delta.update(plain)
                    name_rows.extend((low, seq, spelled) for low, spelled in names.items())
                db.executemany("INSERT INTO terms (id, term) VALUES (?, ?)", new_terms)
                db.executemany("INSERT INTO names VALUES (?, ?, ?)", name_rows)
                self._apply_plain(plain_delta)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                self._vocab = None
                raise

    def _apply_plain(self, delta: Counter) -> None:
        changes = [(w, n) for w, n in delta.items() if n]
        self.db.executemany("INSERT INTO plain VALUES (?, ?) ON CONFLICT(word) DO UPDATE SET n = n + excluded.n",
                            changes)
        gone = [(w,) for w, n in changes if n < 0]
        if gone:
            self.db.executemany("DELETE FROM plain WHERE word=? AND n <= 0", gone)

    def remove(self, pids: Iterable[str]) -> None:
        with self._lock:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                delta: Counter = Counter()
                for pid in pids:
                    row = db.execute("SELECT seq, plain FROM docs WHERE pid=?", (pid,)).fetchone()
                    if row is None:
                        continue
                    delta.subtract(json.loads(row[1]))
                    db.execute("DELETE FROM names WHERE seq=?", (row[0],))
                    db.execute("DELETE FROM docs WHERE seq=?", (row[0],))
                self._apply_plain(delta)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def count(self) -> int:
        with self._lock:
            return self.db.execute("SELECT COUNT(*) FROM docs").fetchone()[0]

    # --- names (Analyzer.corpus_names) ------------------------------------------------------------
    def name_for(self, word: str) -> str | None:
        """The spelling the corpus uses for `word` (lower case) when it only ever writes it
        as a name: `analysis.corpus_names(...)[word]`, read from the incremental tables."""
        with self._lock:
            row = self.db.execute(
                "SELECT spelling FROM names WHERE word=? AND NOT EXISTS (SELECT 1 FROM plain WHERE word=? AND n > 0) "
                "ORDER BY seq LIMIT 1", (word, word)).fetchone()
        return row[0] if row else None

    def term_ids(self, words: list[str]) -> dict[str, int]:
        if not words:
            return {}
        out: dict[str, int] = {}
        with self._lock:
            for s in range(0, len(words), 500):
                part = words[s:s + 500]
                marks = ",".join("?" * len(part))
                out.update(self.db.execute(f"SELECT term, id FROM terms WHERE term IN ({marks})", part))
        return out

    # --- titles (the paper listing) --------------------------------------------------------------
    def titles_page(self, after: tuple[str, int] | None, limit: int) -> list[tuple[str, int, str]]:
        """(title_lower, seq, pid) in title order, after a (title_lower, seq) position."""
        with self._lock:
            if after is None:
                return self.db.execute("SELECT title_lower, seq, pid FROM docs ORDER BY title_lower, seq LIMIT ?",
                                       (limit,)).fetchall()
            return self.db.execute("SELECT title_lower, seq, pid FROM docs WHERE (title_lower, seq) > (?, ?) "
                                   "ORDER BY title_lower, seq LIMIT ?", (*after, limit)).fetchall()

    def titles(self, page: int = 5000) -> Iterator[str]:
        """Every title (in index order), a page at a time: the landing page counts their words."""
        last = 0
        while True:
            with self._lock:
                rows = self.db.execute("SELECT seq, title FROM docs WHERE seq > ? ORDER BY seq LIMIT ?",
                                       (last, page)).fetchall()
            if not rows:
                return
            yield from (title for _, title in rows)
            last = rows[-1][0]

    def title_matches(self, needle: str) -> list[str]:
        """Ids whose lower-cased title contains `needle` or whose lower-cased id is it, by title."""
        with self._lock:
            return [r[0] for r in self.db.execute(
                "SELECT pid FROM docs WHERE instr(title_lower, ?) > 0 OR pid_lower = ? ORDER BY title_lower, seq",
                (needle, needle))]

    def order_by_title(self, pids: Iterable[str]) -> list[str]:
        keys: list[tuple[str, int, str]] = []
        pids = list(pids)
        with self._lock:
            for s in range(0, len(pids), 500):
                part = pids[s:s + 500]
                keys.extend(self.db.execute(
                    f"SELECT title_lower, seq, pid FROM docs WHERE pid IN ({','.join('?' * len(part))})", part))
        return [pid for _, _, pid in sorted(keys)]

    # --- BM25 builds -----------------------------------------------------------------------------
    def _build_dir(self, revision: str) -> Path:
        digest = hashlib.sha1(f"{self.lexicon_id}\x1f{revision}".encode()).hexdigest()[:16]
        return self.folder / f"bm25-{digest}"

    def open_build(self, revision: str) -> LexicalIndex | None:
        """The build made at `revision` from this lexicon, memory-mapped; None if there is none."""
        self.db  # noqa: B018 - sets lexicon_id
        return self._open(self._build_dir(revision), revision)

    def latest_build(self) -> LexicalIndex | None:
        """The newest build of this lexicon, whatever its revision (used while a writer works)."""
        self.db  # noqa: B018
        name = self.meta("latest_build")
        return self._open(self.folder / name, None) if name else None

    def _open(self, folder: Path, revision: str | None) -> LexicalIndex | None:
        meta_path = folder / "build.json"
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if meta.get("format") != BUILD_FORMAT or meta.get("lexicon_id") != self.lexicon_id:
                return None
            if revision is not None and meta.get("revision") != revision:
                return None
            arrays = {k: np.load(folder / f"{k}.npy", mmap_mode="r", allow_pickle=False)
                      for k in ("data", "indices", "indptr", "df", "ids", "ids_offsets")}
            n_docs, n_terms = int(meta["n_docs"]), int(meta["n_terms"])
            if (len(arrays["ids_offsets"]) != n_docs + 1 or len(arrays["indptr"]) != n_terms + 1
                    or len(arrays["df"]) != n_terms or len(arrays["data"]) != len(arrays["indices"])
                    or (n_terms and int(arrays["indptr"][-1]) != len(arrays["data"]))):
                raise ValueError("the arrays do not fit together")
            matrix = {**arrays, "n_docs": n_docs, "n_terms": n_terms}
            return LexicalIndex(_Ids(arrays["ids"], arrays["ids_offsets"]), matrix, self.term_ids,
                                meta["revision"], folder)
        except FileNotFoundError:
            return None  # removed by a newer build meanwhile
        except Exception as exc:  # noqa: BLE001 - a cache: whatever is wrong with it, it is rebuilt
            log.warning("the lexical (BM25) index %s was damaged (%s: %s); rebuilding it",
                        folder, type(exc).__name__, str(exc)[:120])
            shutil.rmtree(folder, ignore_errors=True)
            return None

    def build(self, revision: str) -> LexicalIndex:
        """A BM25 build of the papers here, saved for `revision` (readers memory-map it)."""
        ids, matrix = self._matrix()
        target = self._build_dir(revision)
        tmp = self.folder / f"{target.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:6]}"
        try:
            tmp.mkdir(parents=True)
            blob, offsets = _pack_ids(ids)
            for key, arr in (("data", matrix["data"]), ("indices", matrix["indices"]), ("indptr", matrix["indptr"]),
                             ("df", matrix["df"]), ("ids", blob), ("ids_offsets", offsets)):
                np.save(tmp / f"{key}.npy", arr, allow_pickle=False)
            (tmp / "build.json").write_text(json.dumps({
                "format": BUILD_FORMAT, "lexicon_id": self.lexicon_id, "revision": revision,
                "n_docs": matrix["n_docs"], "n_terms": matrix["n_terms"], "avgdl": matrix["avgdl"]}), encoding="utf-8")
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            log.debug("cannot save the BM25 build %s (%s); keeping it in memory", target, exc)
            return LexicalIndex(ids, matrix, self.term_ids, revision)
        self.set_meta("latest_build", target.name)
        self._prune(keep=target.name)
        opened = self._open(target, revision)
        return opened if opened is not None else LexicalIndex(ids, matrix, self.term_ids, revision)

    def _prune(self, keep: str) -> None:
        """Older builds go (a process still reading one keeps its open files until it lets go)."""
        for old in self.folder.glob("bm25-*"):
            if old.name != keep and old.is_dir():
                shutil.rmtree(old, ignore_errors=True)

    def build_in_memory(self, revision: str = "") -> LexicalIndex:
        """A snapshot of the papers here, not saved (a reader while the first ingest runs)."""
        ids, matrix = self._matrix()
        return LexicalIndex(ids, matrix, self.term_ids, revision)

    def _matrix(self) -> tuple[list[str], dict]:
        """The paper ids in index order and the BM25 matrix of their terms."""
        with self._lock:
            n_terms = self.db.execute("SELECT COALESCE(MAX(id) + 1, 0) FROM terms").fetchone()[0]
            rows = self.db.execute("SELECT pid, terms FROM docs ORDER BY seq").fetchall()
        return [pid for pid, _ in rows], build_matrix([np.frombuffer(b, dtype=np.int32) for _, b in rows], n_terms)


class CorpusNames:
    """`Analyzer.corpus_names` read from the lexicon: `.get(word)` like the dict it replaces."""

    def __init__(self, lexicon: Lexicon):
        self.lexicon = lexicon

    def get(self, word: str, default: str | None = None) -> str | None:
        spelled = self.lexicon.name_for(word)
        return default if spelled is None else spelled

    def __getitem__(self, word: str) -> str:
        spelled = self.lexicon.name_for(word)
        if spelled is None:
            raise KeyError(word)
        return spelled

    def __contains__(self, word: object) -> bool:
        return isinstance(word, str) and self.lexicon.name_for(word) is not None

