"""The Chroma index: one collection of chunks, one of papers, and the lexicon beside them.

The paper record is written after its chunks and lists their ids, so it doubles as a
commit marker: a paper without a record is redone on the next ingest, and chunks no
record points at are swept. Ids derive from content, so unchanged papers cost nothing.

Nothing here loads every paper: questions read the k retrieved records and the chunks
they list by id; ingest reads the records of the incoming ids and finds duplicates by
their title and abstract keys (Chroma `where` lookups); the lexical index and the
corpus-name map live in `rag.lexicon`, kept in step with every write and reconciled with
the store when they disagree. Whole-index scans (the orphan sweep, the lexicon's
reconciliation, back-filling keys of older indexes) go page by page and run only when a
count or a revision says they are needed.

Writes hold the data dir's `WriteLock` (one writer across processes and threads). The
embedded Chroma keeps part of the index in memory per client, so a client that another
process wrote behind is out of date: reading through it fails ("Error finding id") and
writing through it breaks the index for good. Every write therefore starts by reopening
the client if the index's generation (paper-rag.json) moved since this store last saw it,
and readers reopen when it moved or when a read fails that way (`sync`, `_read`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence
from urllib.parse import urlparse

import numpy as np

from .chunking import Chunker
from .corpus import abstract_key, normalise_title
from .embeddings import MAX_TOKENS, CachedEmbedder, EmbeddingCache, get_embedder
from .errors import (ConfigError, DataDirError, IndexBusyError, IndexCorruptError, IndexMismatchError,
                     IndexMissingError)
from .index_state import IndexState, read_generation, read_marker
from .lexicon import CorpusNames, LexicalIndex, Lexicon
from .locking import WriteLock
from .settings import Settings, redact_url
from .types import Chunk, Paper

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PAGE = 2000  # records per page when a scan cannot be avoided
ID_PAGE = 500  # ids or keys per `get(ids=...)` / `$in` lookup
WINDOW_BATCHES = 32  # ingest embeds up to this many embedding batches of chunks at once, sorted by length
ProgressFactory = Callable[..., Any]


@dataclass(frozen=True)
class IngestIssue:
    """An incoming paper that was not written: it would have replaced another paper
    (`conflict`: same id, another title) or it is already indexed (`duplicate`)."""

    kind: Literal["conflict", "duplicate"]
    paper_id: str
    title: str
    indexed_id: str
    indexed_title: str

    def describe(self) -> str:
        if self.kind == "conflict":
            return (f"id '{self.paper_id}' is already used by '{self.indexed_title[:70]}'; "
                    f"'{self.title[:70]}' was not indexed (nothing was replaced; --replace replaces it)")
        return (f"'{self.title[:70]}' is already indexed as '{self.indexed_id}'"
                + (f" ('{self.indexed_title[:60]}')" if self.indexed_title != self.title else "")
                + "; stored once")


@dataclass
class IngestReport:
    papers_in: int = 0
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    chunks_deleted: int = 0
    seconds: float = 0.0
    conflicts: list[IngestIssue] = field(default_factory=list)
    duplicates: list[IngestIssue] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.chunks_deleted)

    def summary(self) -> str:
        skipped = ""
        if self.duplicates or self.conflicts:
            skipped = (f", {len(self.duplicates)} already indexed, "
                       f"{len(self.conflicts)} conflict{'s' if len(self.conflicts) != 1 else ''}")
        return (f"{self.papers_in} papers: {len(self.added)} added, {len(self.updated)} updated, "
                f"{self.unchanged} unchanged{skipped}; {self.chunks_embedded} chunks embedded, "
                f"{self.chunks_deleted} removed in {self.seconds:.1f}s")


@dataclass
class ChunkHit:
    chunk_id: str
    paper_id: str
    text: str
    index: int
    score: float


_SQLITE_HEADER = b"SQLite format 3\x00"


def check_index_file(settings: Settings) -> None:
    """A chroma.sqlite3 that is empty or not SQLite is damage; Chroma would open a 0-byte
    file as a new, empty index and the papers would be gone without a word."""
    db = settings.chroma_path / "chroma.sqlite3"
    try:
        with db.open("rb") as fh:
            head = fh.read(len(_SQLITE_HEADER))
    except FileNotFoundError:
        return
    except IsADirectoryError:
        head = b""
    except OSError as exc:
        raise DataDirError.from_os_error(settings.data_dir, exc) from None
    if head != _SQLITE_HEADER:
        what = "is empty (0 bytes)" if not head else "is not an SQLite database"
        raise IndexCorruptError.at(settings.data_dir, f"the index file {db} {what}; the index is damaged")


def _forget_cached_client(path: str) -> None:
    """Chroma shares one client per path within a process; a reopen needs a new one."""
    try:
        from chromadb.api.shared_system_client import SharedSystemClient

        with SharedSystemClient._refcount_lock:
            SharedSystemClient._identifier_to_system.pop(path, None)
            SharedSystemClient._identifier_to_refcount.pop(path, None)
    except (ImportError, AttributeError):  # another chromadb layout: the cached client is reused
        log.debug("cannot drop chromadb's cached client for %s", path)


def make_client(settings: Settings):
    import chromadb
    import chromadb.errors
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=True)
    if settings.chroma_url:
        url = urlparse(settings.chroma_url)
        try:
            return chromadb.HttpClient(host=url.hostname, port=url.port or (443 if url.scheme == "https" else 8000),
                                       ssl=url.scheme == "https", settings=chroma_settings)
        except Exception as exc:  # the client checks the server at construction
            raise ConfigError(f"cannot reach the Chroma server at {redact_url(settings.chroma_url)} ({type(exc).__name__})",
                              "Start it with `chroma run --path DIR --port PORT`, or unset RAG_CHROMA_URL "
                              "to use the embedded store.") from None
    path = settings.chroma_path
    check_index_file(settings)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataDirError.from_os_error(settings.data_dir, exc) from None
    _forget_cached_client(str(path))  # every store gets its own client (see PaperStore.sync)
    try:
        return chromadb.PersistentClient(path=str(path), settings=chroma_settings)
    except OSError as exc:
        raise DataDirError.from_os_error(settings.data_dir, exc) from None
    except chromadb.errors.ChromaError as exc:
        text = str(exc)
        if "readonly" in text or "unable to open" in text:
            raise DataDirError(f"the index at {path} cannot be opened for writing ({text}); Chroma needs "
                               f"write access to its folder even to read") from None
        raise IndexCorruptError.at(settings.data_dir, f"the index at {path} cannot be opened ({text})") from None


def content_hash(paper: Paper, chunker_signature: str) -> str:
    blob = json.dumps([paper.title, paper.abstract, paper.url, list(paper.authors), paper.year,
                       paper.metadata, chunker_signature], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass
class PaperRecord:
    """A paper as stored: the paper, the chunk ids its record lists, its content hash."""

    paper: Paper
    chunk_ids: list[str]
    content_hash: str | None


class PaperStore:
    def __init__(self, settings: Settings, embedder=None, client=None):
        self.settings = settings
        self.embedder = embedder if embedder is not None else get_embedder(settings)
        self._ingest_embedder: CachedEmbedder | None = None
        self._chunker: Chunker | None = None
        self._lexicon: Lexicon | None = None
        self._lexicon_lock = threading.Lock()
        # The embedded store (not a server, not an injected client) is reopened when stale.
        self._embedded = client is None and not settings.chroma_url
        self._seen_generation: str | None = None
        self._marker: tuple[str | None, bool] = (None, False)  # (generation, writing) at the last sync
        self._rev_cache: tuple[tuple, str, int] | None = None  # ((generation, opened), revision, count)
        self._writing = 0  # nesting depth of this store's write session (under the WriteLock)
        self._reopen_lock = threading.Lock()
        self._opened = 0  # counts reopens, so concurrent readers reopen once, not once each
        if not self._embedded:
            self.client = client if client is not None else make_client(settings)
            self._bind()
            return
        if (settings.chroma_path / "chroma.sqlite3").exists():
            self._connect()
        else:  # a new index: created under the lock, with its marker
            with WriteLock(settings.data_dir):
                new = not (settings.chroma_path / "chroma.sqlite3").exists()
                self._connect()
                if new and IndexState.load(settings.data_dir) is None:
                    state = IndexState()
                    state.save(settings.data_dir)
                    self._seen_generation = state.generation
        self._check_not_emptied()

    # --- set-up ----------------------------------------------------------
    def _connect(self) -> None:
        self._seen_generation = read_generation(self.settings.data_dir)
        self.client = make_client(self.settings)
        self._bind()

    def _bind(self) -> None:
        base = self.settings.collection
        self.chunks = self._collection(f"{base}_chunks")
        self.papers = self._collection(f"{base}_papers")

    def _check_not_emptied(self) -> None:
        state = IndexState.load(self.settings.data_dir)
        if state and state.papers > 0 and not state.writing and self.papers.count() == 0:
            raise IndexCorruptError.at(
                self.settings.data_dir,
                f"the index at {self.location} holds no papers, but it held {state.papers} after its last "
                f"ingest (paper-rag.json): it was damaged, emptied or replaced")

    @property
    def chunker(self) -> Chunker:
        if self._chunker is None:
            self._chunker = Chunker(self.settings.chunk_tokens, self.settings.tiktoken_encoding,
                                    cache_dir=self.settings.cache_dir, max_model_tokens=MAX_TOKENS,
                                    count_model_tokens=self.embedder.count_tokens)
        return self._chunker

    @property
    def ingest_embedder(self) -> CachedEmbedder:
        """Ingest embeds through a persistent cache; queries go to the model directly."""
        if self._ingest_embedder is None:
            self._ingest_embedder = CachedEmbedder(self.embedder, EmbeddingCache(self.settings.cache_dir / "embeddings.sqlite"))
        return self._ingest_embedder

    @property
    def lexicon(self) -> Lexicon:
        """The lexical side of this index (BM25, corpus names, titles): see `rag.lexicon`."""
        with self._lexicon_lock:
            if self._lexicon is None:
                self._lexicon = Lexicon(self.settings.data_dir / "lexical" / self.settings.collection)
            return self._lexicon

    def _collection(self, name: str):
        model_id = self.embedder.model_id
        # "paper_keys": every record carries title_key/abstract_key (set on new collections;
        # older indexes get them back-filled by their next write, see _ensure_keys).
        col = self.client.get_or_create_collection(
            name, embedding_function=None,
            metadata={"hnsw:space": "cosine", "embedding_model": model_id, "schema": SCHEMA_VERSION, "paper_keys": 1})
        built_with = (col.metadata or {}).get("embedding_model")
        if built_with and built_with != model_id:
            raise IndexMismatchError(
                f"the index in {self.location} was built with embedding model '{built_with}', "
                f"but the current model is '{model_id}'; mixing them would give meaningless results")
        return col

    @property
    def location(self) -> str:
        return self.settings.chroma_url or str(self.settings.chroma_path)

    # --- staying current with writers in other processes ------------------------------
    def sync(self) -> None:
        """Reopen the embedded store if another process wrote to it since this one last
        looked (one small file read; called once per question)."""
        if not self._embedded or self._writing:
            return
        self._marker = read_marker(self.settings.data_dir)
        gen = self._marker[0]
        if gen is not None and gen != self._seen_generation:
            self._reopen(self._opened)

    def _reopen(self, seen: int) -> None:
        with self._reopen_lock:
            if self._opened != seen:
                return  # another thread reopened meanwhile
            self._connect()
            self._rev_cache = None
            self._opened += 1

    def _read(self, fn: Callable[[], Any]) -> Any:
        """A read through the embedded store; if another process wrote behind this client
        (Chroma: "Error finding id", "Error getting embedding"), reopen once and retry."""
        import chromadb.errors

        seen = self._opened
        try:
            return fn()
        except chromadb.errors.ChromaError as exc:
            if not self._embedded or self._writing:
                raise IndexCorruptError.at(self.settings.data_dir,
                                           f"the index at {self.location} cannot be read ({exc})") from None
            log.debug("reopening %s after %s", self.location, exc)
        self._reopen(seen)
        try:
            return fn()
        except chromadb.errors.ChromaError as exc:
            raise IndexCorruptError.at(self.settings.data_dir,
                                       f"the index at {self.location} cannot be read ({exc})") from None

    @contextlib.contextmanager
    def writing(self, *, wait: bool = True, on_wait: Callable[[str], None] | None = None,
                user: bool = True) -> Iterator[IndexState | None]:
        """The one way to write: the data dir's WriteLock, a client that is current (reopened
        if another process wrote since), and the marker updated before and after. Yields the
        marker (None for a Chroma server) so callers can record more in it."""
        with WriteLock(self.settings.data_dir, wait=wait, on_wait=on_wait) as lock:
            self._rev_cache = None
            if not lock.outermost or not self._embedded:
                self._writing += 1
                try:
                    yield None
                finally:
                    self._writing -= 1
                    self._rev_cache = None
                return
            state = IndexState.load(self.settings.data_dir)
            if state is None or state.generation != self._seen_generation:
                self._reopen(self._opened)
            if state is None:  # an index paper-rag did not create (or an older one): adopt it, as the user's
                state = IndexState(papers=self.papers.count(), user_writes=True)
            state.writing = True
            state.user_writes = state.user_writes or user
            self._seen_generation = state.new_generation()
            state.save(self.settings.data_dir)
            self._writing += 1
            try:
                yield state
            finally:
                self._writing -= 1
                self._rev_cache = None
                try:
                    state.papers = self.papers.count()
                    state.writing = False
                except Exception:  # noqa: BLE001 - the store failed; keep writing=True so no false alarm
                    pass
                self._seen_generation = state.new_generation()
                try:
                    state.save(self.settings.data_dir)
                except OSError as exc:  # e.g. a full disk: the papers are written, only the marker is stale
                    log.warning("cannot update %s (%s)", self.settings.data_dir / "paper-rag.json", exc.strerror)

    # --- revision and count, cached while nobody writes -----------------------------------
    def _cache_key(self) -> tuple | None:
        """What makes a cached revision valid: the embedded store, no write under way here or
        (by the marker) in another process, and the same generation and client as when cached.
        Every write changes the generation at its start and at its end."""
        gen, writing = self._marker
        if not self._embedded or self._writing or writing or gen is None or gen != self._seen_generation:
            return None
        return gen, self._opened

    def _revision_and_count(self, synced: bool = False) -> tuple[str, int]:
        if not synced:
            self.sync()
        key = self._cache_key()
        cached = self._rev_cache
        if key is not None and cached is not None and cached[0] == key:
            return cached[1], cached[2]

        def read() -> tuple[str, int]:
            meta = self.client.get_collection(self.papers.name, embedding_function=None).metadata or {}
            n = self.papers.count()
            return f"{meta.get('revision', 0)}:{n}", n
        rev, n = self._read(read)
        if key is not None:
            self._rev_cache = (key, rev, n)
        return rev, n

    def count(self) -> int:
        if self._writing:
            return self._read(lambda: self.papers.count())
        return self._revision_and_count()[1]

    def require_papers(self) -> None:
        if self.count() == 0:
            raise IndexMissingError(f"the index at {self.location} has no papers yet")

    def revision(self) -> str:
        """Changes whenever the set of papers changes (used to refresh derived indexes). Read
        from Chroma (collection metadata and count) unless nothing can have changed since the
        last read: an embedded store whose marker generation has not moved."""
        return self._revision_and_count()[0]

    def _collection_meta(self) -> dict[str, Any]:
        meta = dict(self.client.get_collection(self.papers.name, embedding_function=None).metadata or {})
        meta.pop("hnsw:space", None)  # cannot be modified, even to the same value
        return meta

    def _set_meta(self, **values: Any) -> None:
        meta = self._collection_meta()
        for k, v in values.items():
            if v is None:
                meta.pop(k, None)
            else:
                meta[k] = v
        self.papers.modify(metadata=meta)
        self._rev_cache = None

    def _bump_revision(self, **extra: Any) -> None:
        self._set_meta(revision=uuid.uuid4().hex, **extra)  # unique, so two copies of an index never share one

    # --- the bundled corpus, on first use --------------------------------------------------
    def is_new(self) -> bool:
        """An index nobody has written to yet (or whose automatic first indexing of the
        bundled corpus did not finish). Only such an index gets the bundled corpus
        automatically; an index paper-rag did not create (no marker) never does."""
        if not self._embedded:
            return self.count() == 0  # a server's collection: empty means new
        state = IndexState.load(self.settings.data_dir)
        if state is None:
            return False
        return state.bundled == "pending" or (state.bundled is None and not state.user_writes
                                              and self.count() == 0)

    def index_bundled_if_new(self, load: Callable[[], Sequence[Paper]], progress: ProgressFactory | None = None,
                             on_wait: Callable[[str], None] | None = None) -> IngestReport | None:
        """Index the bundled corpus into a new index; None if the index already has papers.
        An empty index that is not new is an IndexMissingError: nothing is written over it."""
        if self.count() > 0 and not self.is_new():
            return None
        start = time.perf_counter()
        with self.writing(on_wait=on_wait, user=False) as state:
            if not self.is_new():  # another process may have done it while we waited
                if self.count() > 0:
                    return None
                raise IndexMissingError(
                    f"the index at {self.location} has no papers",
                    "Index papers with `rag ingest FILE...`, or the bundled corpus with `rag ingest --bundled`.")
            if state is not None:
                state.bundled = "pending"
                state.save(self.settings.data_dir)
            report = self._ingest_locked(list(load()), progress, replace_all=False, replace=False)
            if state is not None:
                state.bundled = "done"
        report.seconds = time.perf_counter() - start
        return report

    # --- ingest ------------------------------------------------------------
    def ingest(self, papers: Sequence[Paper], progress: ProgressFactory | None = None,
               replace_all: bool = False, replace: bool = False, rebuild: bool = False, wait: bool = True,
               on_wait: Callable[[str], None] | None = None) -> IngestReport:
        """Add new papers, replace changed ones; unchanged ones cost a hash comparison.

        A paper whose id is taken by an indexed paper with another title is a conflict and is
        not written unless `replace`; one whose title or abstract is already indexed under
        another id is a duplicate and is skipped. `rebuild` drops every paper first, within the
        same write. wait=False raises IndexBusyError if another writer holds the data dir.
        """
        start = time.perf_counter()
        with self.writing(wait=wait, on_wait=on_wait):
            report = self._ingest_locked(papers, progress, replace_all, replace, rebuild=rebuild)
        report.seconds = time.perf_counter() - start
        return report

    def _ingest_locked(self, papers: Sequence[Paper], progress, replace_all: bool, replace: bool,
                       rebuild: bool = False) -> IngestReport:
        import chromadb.errors

        try:
            self._lexicon_begin()
            if rebuild:
                self._delete_locked(self._all_ids(self.papers))
            report = self._ingest(papers, progress, replace_all, replace or replace_all, changed=rebuild)
            self._lexicon_end()
            return report
        except chromadb.errors.ChromaError as exc:
            raise IndexCorruptError.at(self.settings.data_dir,
                                       f"writing to the index at {self.location} failed ({exc})") from None

    def _screen(self, papers: Sequence[Paper], records: dict[str, dict[str, Any]], replace: bool,
                report: IngestReport, keep: set[str] | None) -> list[Paper]:
        """Conflicts and duplicates against the index (and earlier papers of the same batch).
        The index is asked only about the incoming titles and abstracts (by their keys)."""
        by_title: dict[str, set[str]] = {}
        by_abstract: dict[str, set[str]] = {}
        titles: dict[str, str] = {}

        def remember(pid: str, title: str, tkey: str, akey: str) -> None:
            titles[pid] = title
            if tkey:
                by_title.setdefault(tkey, set()).add(pid)
            by_abstract.setdefault(akey, set()).add(pid)

        keys = [(normalise_title(p.title), abstract_key(p.abstract)) for p in papers]
        indexed = {**self._records_where("title_key", {t for t, _ in keys if t}),
                   **self._records_where("abstract_key", {a for _, a in keys})}
        for pid, rec in indexed.items():
            if keep is None or pid in keep:  # with replace_all, the others are about to go
                remember(pid, rec["title"], rec["title_key"], rec["abstract_key"])
        accepted: list[Paper] = []
        batch_ids: set[str] = set()
        for p, (tkey, akey) in zip(papers, keys):
            rec = records.get(p.id)
            if rec is not None and rec["title_key"] != tkey and not replace:
                report.conflicts.append(IngestIssue("conflict", p.id, p.title, p.id, rec["title"]))
                continue
            same = [pids for pids in (by_title.get(tkey) if tkey else None, by_abstract.get(akey)) if pids]
            other = next((min(pids) for pids in same if p.id not in pids), None)
            if p.id in batch_ids:
                other = p.id  # the same id twice in one batch: the first one stands
            if other is not None:
                report.duplicates.append(IngestIssue("duplicate", p.id, p.title, other, titles.get(other, "")))
                continue
            accepted.append(p)
            batch_ids.add(p.id)
            remember(p.id, p.title, tkey, akey)
        return accepted

    def _ingest(self, papers: Sequence[Paper], progress, replace_all: bool, replace: bool = False,
                changed: bool = False) -> IngestReport:
        report = IngestReport(papers_in=len(papers))
        signature = self.chunker.signature
        self._ensure_keys()
        total_before = self._collection_meta().get("chunks_total")
        count_before = self.chunks.count()
        records = self._records([p.id for p in papers])
        keep = {p.id for p in papers} if replace_all else None
        papers = self._screen(papers, records, replace, report, keep)
        hashes = [content_hash(p, signature) for p in papers]
        same = [cid for p, h in zip(papers, hashes) if (records.get(p.id) or {}).get("content_hash") == h
                for cid in records[p.id]["chunk_ids"]]
        present = self._existing_ids(self.chunks, same)
        todo: list[tuple[Paper, str]] = []
        for p, h in zip(papers, hashes):
            rec = records.get(p.id)
            if rec and rec["content_hash"] == h and all(cid in present for cid in rec["chunk_ids"]):
                report.unchanged += 1
            else:
                todo.append((p, h))
        del present, same
        bar = progress(total=len(todo), desc="Embedding", unit="paper") if progress and todo else None
        try:
            self._write_papers(todo, records, report, bar)
        finally:
            if bar is not None:
                bar.close()
        if replace_all:
            stale = [pid for pid in self._all_ids(self.papers) if pid not in keep]
            if stale:
                report.chunks_deleted += self._delete_locked(stale)
        # Orphans (chunks no record lists: a killed ingest, a foreign write) are looked for
        # page by page only when the chunk count is not the one this index's writes explain.
        expected = None if total_before is None or count_before != total_before else \
            count_before + report.chunks_embedded - report.chunks_deleted
        count_after = self.chunks.count()
        if expected is None or count_after != expected:
            report.chunks_deleted += self._sweep_orphans()
            count_after = self.chunks.count()
        if report.changed or changed:
            self._bump_revision(chunks_total=count_after)
        elif total_before != count_after:
            self._set_meta(chunks_total=count_after)
        return report

    # --- the write pipeline --------------------------------------------------------------------
    def _windows(self, todo: Sequence[tuple[Paper, str]]) -> Iterator[list[tuple[Paper, str, list[Chunk]]]]:
        """Papers in input order, grouped so each group holds about WINDOW_BATCHES batches of chunks."""
        limit = WINDOW_BATCHES * self.settings.embedding_batch_size
        window: list[tuple[Paper, str, list[Chunk]]] = []
        n = 0
        for p, h in todo:
            chunks = self.chunker.chunk_paper(p)
            window.append((p, h, chunks))
            n += len(chunks)
            if n >= limit:
                yield window
                window, n = [], 0
        if window:
            yield window

    def _write_papers(self, todo: Sequence[tuple[Paper, str]], records: dict[str, dict[str, Any]],
                      report: IngestReport, bar) -> None:
        """Embed window i+1 while window i is written. Each window's missing chunks are embedded
        in one call, which sorts all of them by length (little padding); its chunks, then its
        paper records (the commit markers), are written in input order by a writer thread."""
        if not todo:
            return
        writer = _Writer(self, records, report, bar)
        try:
            for window in self._windows(todo):
                writer.check()
                ids = [c.id for _, _, chunks in window for c in chunks]
                present = self._existing_ids(self.chunks, ids)
                new_chunks = [c for _, _, chunks in window for c in chunks if c.id not in present]
                emb = (self.ingest_embedder.embed([c.embed_text for c in new_chunks]) if new_chunks
                       else np.zeros((0, getattr(self.embedder, "dim", None) or 0), dtype=np.float32))
                writer.put((window, new_chunks, emb))
        finally:
            writer.close()  # writes what was handed over; re-raises the writer's error

    def _write_window(self, window, new_chunks: list[Chunk], emb: np.ndarray,
                      records: dict[str, dict[str, Any]], report: IngestReport) -> None:
        vectors: dict[str, np.ndarray] = {}
        if new_chunks:
            vectors.update(zip((c.id for c in new_chunks), emb))
            self._add_chunks(new_chunks, emb)
        report.chunks_embedded += len(new_chunks)
        reused = [c.id for _, _, chunks in window for c in chunks if c.id not in vectors]
        report.chunks_reused += len(reused)
        for part in _pages(reused, ID_PAGE):
            got = self.chunks.get(ids=part, include=["embeddings"])
            vectors.update(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32)))
        rows = []
        for p, h, chunks in window:
            mean = np.mean([vectors[c.id] for c in chunks], axis=0)
            mean /= max(float(np.linalg.norm(mean)), 1e-12)
            rows.append((p, mean, self._paper_meta(p, h, chunks)))
        # Paper records go in after their chunks: a record is the commit marker of its paper.
        step = self._max_batch()
        for s in range(0, len(rows), step):
            part = rows[s:s + step]
            self.papers.upsert(ids=[p.id for p, _, _ in part], documents=[p.abstract for p, _, _ in part],
                               embeddings=[m.tolist() for _, m, _ in part], metadatas=[meta for _, _, meta in part])
        stale: list[str] = []
        for p, _, chunks in window:
            old = records.get(p.id)
            if old:
                keep = {c.id for c in chunks}
                stale.extend(cid for cid in old["chunk_ids"] if cid not in keep)
                report.updated.append(p.id)
            else:
                report.added.append(p.id)
        for part in _pages(stale, ID_PAGE):
            self.chunks.delete(ids=part)
        report.chunks_deleted += len(stale)
        self.lexicon.upsert((p.id, h, p.title, p.abstract) for p, h, _ in window)

    def _max_batch(self) -> int:
        return max(1, min(5000, self.client.get_max_batch_size()))

    def _add_chunks(self, chunks: list[Chunk], emb: np.ndarray) -> None:
        step = self._max_batch()
        for s in range(0, len(chunks), step):
            part = chunks[s:s + step]
            self.chunks.upsert(
                ids=[c.id for c in part], embeddings=emb[s:s + step].tolist(),
                documents=[c.text for c in part],
                metadatas=[{"paper_id": c.paper_id, "title": c.title, "index": c.index,
                            "n_chunks": c.n_chunks} for c in part])

    @staticmethod
    def _paper_meta(p: Paper, h: str, chunks: list[Chunk]) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "title": p.title, "content_hash": h, "chunk_ids": json.dumps([c.id for c in chunks]),
            "n_chunks": len(chunks), "code_urls": json.dumps(list(p.code_urls)),
            "authors": json.dumps(list(p.authors)), "extra": json.dumps(p.metadata, default=str),
            "title_key": normalise_title(p.title), "abstract_key": abstract_key(p.abstract),
        }
        if p.url:
            meta["url"] = p.url
        if p.year is not None:
            meta["year"] = p.year
        return meta

    def _sweep_orphans(self) -> int:
        """Chunks their paper's record does not list, page by page (bounded memory)."""
        orphans: list[str] = []
        for got in self._pages_of(self.chunks, ["metadatas"]):
            metas = got["metadatas"]
            pids = list({(m or {}).get("paper_id") for m in metas} - {None})
            listed = {pid: set(rec["chunk_ids"]) for pid, rec in self._records(pids).items()}
            orphans.extend(cid for cid, m in zip(got["ids"], metas)
                           if cid not in listed.get((m or {}).get("paper_id"), ()))
        for part in _pages(orphans, ID_PAGE):
            self.chunks.delete(ids=part)
        return len(orphans)

    def delete_papers(self, paper_ids: Iterable[str], bump: bool = True, wait: bool = True,
                      on_wait: Callable[[str], None] | None = None) -> None:
        ids = list(paper_ids)
        if not ids:
            return
        with self.writing(wait=wait, on_wait=on_wait):
            self._lexicon_begin()
            total, before = self._collection_meta().get("chunks_total"), self.chunks.count()
            deleted = self._delete_locked(ids)
            if bump:  # the orphan check's count stays valid only if it was valid before
                self._bump_revision(chunks_total=total - deleted if total is not None and total == before else None)
            self._lexicon_end()

    def _delete_locked(self, ids: Sequence[str]) -> int:
        """Delete papers, their chunks and their lexicon rows; returns the chunks deleted."""
        before = self.chunks.count()
        for part in _pages(list(ids), ID_PAGE):
            self.chunks.delete(where={"paper_id": {"$in": list(part)}})
            self.papers.delete(ids=list(part))
        self.lexicon.remove(ids)
        return before - self.chunks.count()

    # --- record reads ------------------------------------------------------------------------
    def _records(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """id -> content hash, chunk ids, title and the keys duplicates are found by, for the
        given ids only (computed from the record itself when an older index did not store them)."""
        records: dict[str, dict[str, Any]] = {}
        for part in _pages(list(dict.fromkeys(ids)), ID_PAGE):
            got = self.papers.get(ids=list(part), include=["metadatas"])
            records.update(self._record_rows(got["ids"], got["metadatas"]))
        return records

    def _records_where(self, key: str, values: set[str]) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        for part in _pages(sorted(values), ID_PAGE):
            got = self.papers.get(where={key: {"$in": list(part)}}, include=["metadatas"])
            records.update(self._record_rows(got["ids"], got["metadatas"]))
        return records

    def _record_rows(self, ids: list[str], metas: list[dict | None]) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        lacking = []
        for pid, m in zip(ids, metas):
            m = m or {}
            title = m.get("title", "")
            records[pid] = {"content_hash": m.get("content_hash"), "chunk_ids": json.loads(m.get("chunk_ids", "[]")),
                            "title": title, "title_key": m.get("title_key", normalise_title(title)),
                            "abstract_key": m.get("abstract_key")}
            if not records[pid]["abstract_key"]:
                lacking.append(pid)
        for part in _pages(lacking, ID_PAGE):
            docs = self.papers.get(ids=list(part), include=["documents"])
            for pid, doc in zip(docs["ids"], docs["documents"]):
                records[pid]["abstract_key"] = abstract_key(doc or "")
        return records

    def _paper_records(self) -> dict[str, dict[str, Any]]:
        """Every record (tests and diagnostics; the product reads records by id)."""
        records: dict[str, dict[str, Any]] = {}
        for got in self._pages_of(self.papers, ["metadatas"]):
            records.update(self._record_rows(got["ids"], got["metadatas"]))
        return records

    def _ensure_keys(self) -> None:
        """An index written before records carried title_key/abstract_key gets them once, so
        duplicates can be found by `where` lookups from then on."""
        if self._collection_meta().get("paper_keys"):
            return
        for got in self._pages_of(self.papers, ["metadatas", "documents"]):
            fix_ids, fix_metas = [], []
            for pid, m, doc in zip(got["ids"], got["metadatas"], got["documents"]):
                m = dict(m or {})
                if not m.get("title_key") or not m.get("abstract_key"):
                    m["title_key"] = normalise_title(m.get("title", ""))
                    m["abstract_key"] = abstract_key(doc or "")
                    fix_ids.append(pid)
                    fix_metas.append(m)
            if fix_ids:
                self.papers.update(ids=fix_ids, metadatas=fix_metas)
        self._set_meta(paper_keys=1)

    def _pages_of(self, col, include: list[str], page: int = PAGE) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            got = col.get(include=include, limit=page, offset=offset)
            if not got["ids"]:
                return
            yield got
            offset += len(got["ids"])

    @staticmethod
    def _existing_ids(col, ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for part in _pages(list(ids), 2000):
            found.update(col.get(ids=list(part), include=[])["ids"])
        return found

    def _all_ids(self, col) -> list[str]:
        return [pid for got in self._pages_of(col, [], 20_000) for pid in got["ids"]]

    # --- the lexicon: kept in step with every write ---------------------------------------------
    def _reconcile_lexicon(self) -> None:
        """Make the lexicon hold exactly the store's papers (by id and content hash), page by
        page. Only when it does not match the store's revision (a killed write, an older index,
        another client writing to a Chroma server). Caller holds the write lock."""
        lex = self.lexicon
        have = lex.doc_hashes()
        want: dict[str, str] = {}
        for got in self._pages_of(self.papers, ["metadatas"]):
            for pid, m in zip(got["ids"], got["metadatas"]):
                want[pid] = (m or {}).get("content_hash") or ""
        lex.remove([pid for pid in have if pid not in want])
        todo = [pid for pid, h in want.items() if have.get(pid) != h]
        if todo:
            log.info("indexing %d papers lexically (%s)", len(todo), lex.folder)
        for part in _pages(todo, ID_PAGE):
            got = self.papers.get(ids=list(part), include=["documents", "metadatas"])
            rows = {pid: ((m or {}).get("content_hash") or "", (m or {}).get("title", ""), doc or "")
                    for pid, doc, m in zip(got["ids"], got["documents"], got["metadatas"])}
            lex.upsert((pid, *rows[pid]) for pid in part if pid in rows)
        del have, want

    def _lexicon_begin(self) -> None:
        """Start of a write (lock held): the lexicon must match the store before both change;
        it is marked as changing until `_lexicon_end`."""
        lex = self.lexicon
        try:
            if lex.synced != self._revision_and_count(synced=True)[0]:
                self._reconcile_lexicon()
            lex.mark("")
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            lex.reset(exc)
            self._reconcile_lexicon()
            lex.mark("")

    def _lexicon_end(self) -> None:
        """End of a write: the lexicon matches the store's new revision; its BM25 is built now,
        so no reader has to."""
        rev = self._revision_and_count(synced=True)[0]
        self.lexicon.mark(rev)
        if self.lexicon.open_build(rev) is None:
            self.lexicon.build(rev)

    def lexical(self, revision: str | None = None) -> tuple[LexicalIndex, bool]:
        """(BM25 index, current): the build for `revision` (memory-mapped); else one made now
        under the write lock; else, while a writer holds the lock, the latest build there is
        (current=False: the writer builds the new one when it is done)."""
        rev = revision or self.revision()
        lex = self.lexicon
        try:
            found = lex.open_build(rev)
            if found is not None:
                return found, True
            try:
                with WriteLock(self.settings.data_dir, wait=False):
                    rev = self.revision()  # the revision as of now, with no writer about
                    found = lex.open_build(rev)
                    if found is not None:
                        return found, True
                    if lex.synced != rev:
                        self._reconcile_lexicon()
                        lex.mark(rev)
                    return lex.build(rev), True
            except IndexBusyError:
                latest = lex.latest_build()
                return (latest if latest is not None else lex.build_in_memory(rev)), False
        except sqlite3.DatabaseError as exc:  # the lexicon file went bad under us (a lock is not damage)
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            lex.reset(exc)
            return self.lexical(rev)

    def corpus_names(self) -> CorpusNames:
        """`Analyzer.corpus_names` for this index, read from the lexicon per word."""
        return CorpusNames(self.lexicon)

    # --- reads (each retried once through a reopened client, see _read) ----------------
    def paper_records(self, paper_ids: Sequence[str]) -> dict[str, PaperRecord]:
        """The records of the given papers (missing ids are left out), read by id."""
        ids = list(dict.fromkeys(paper_ids))
        if not ids:
            return {}
        out: dict[str, PaperRecord] = {}
        for part in _pages(ids, ID_PAGE):
            got = self._read(lambda part=part: self.papers.get(ids=list(part), include=["documents", "metadatas"]))
            for pid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"]):
                meta = meta or {}
                out[pid] = PaperRecord(_paper_from_record(pid, doc, meta), json.loads(meta.get("chunk_ids", "[]")),
                                       meta.get("content_hash"))
        return {pid: out[pid] for pid in ids if pid in out}

    def get_papers(self, paper_ids: Sequence[str]) -> dict[str, Paper]:
        return {pid: rec.paper for pid, rec in self.paper_records(paper_ids).items()}

    def existing_ids(self, paper_ids: Iterable[str]) -> set[str]:
        ids = list(paper_ids)
        return self._read(lambda: self._existing_ids(self.papers, ids))

    def iter_papers(self, page: int = ID_PAGE) -> Iterator[Paper]:
        """Every paper, a page at a time (in index order)."""
        for got in self._pages_of(self.papers, ["documents", "metadatas"], page):
            for pid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"]):
                yield _paper_from_record(pid, doc, meta or {})

    def all_papers(self, revision: str | None = None) -> dict[str, Paper]:
        """Every paper in one dict: for tests and small indexes only (the product reads
        papers by id; `iter_papers` and `list_papers` page)."""
        return self._read(lambda: {p.id: p for p in self.iter_papers(PAGE)})

    def list_papers(self, search: str | None = None) -> "PaperList":
        """Papers by title (lower-cased); with `search`, title (and id) matches first, then
        abstract matches. A lazy sequence: `len()` counts, slices read only their records."""
        self.lexical()  # the lexicon (which keeps the titles) is current
        lex = self.lexicon
        if search is None or not search:
            return PaperList(self, None, lex)
        needle = search.lower().strip()
        in_title = lex.title_matches(needle)
        seen = set(in_title)
        pattern = "(?i)" + "".join(ch if ch.isalnum() else f"\\x{{{ord(ch):x}}}" for ch in needle)
        hits = self._read(lambda: self.papers.get(where_document={"$regex": pattern}, include=[])["ids"]) if needle else []
        candidates = [pid for pid in hits if pid not in seen]
        in_abstract: list[str] = []
        for part in _pages(lex.order_by_title(candidates), ID_PAGE):
            found = self.get_papers(part)
            in_abstract.extend(pid for pid in part if pid in found and needle in found[pid].abstract.lower())
        return PaperList(self, in_title + in_abstract, lex)

    def paper_id_by_title(self, title: str, same: Callable[[str, str], bool]) -> str | None:
        """The indexed paper whose title `same`(title, its title) says is this one (looked up
        by its normalised title, so nothing else is read)."""
        key = normalise_title(title)
        if not key:
            return None
        got = self._read(lambda: self.papers.get(where={"title_key": key}, include=["metadatas"]))
        matches = [pid for pid, m in zip(got["ids"], got["metadatas"]) if same(title, (m or {}).get("title", ""))]
        return matches[-1] if matches else None

    def query_chunks(self, query_vec: np.ndarray, n: int, paper_ids: Sequence[str] | None = None) -> list[ChunkHit]:
        # Chroma returns fewer than n results when it holds fewer: no count() on the hot path.
        where = {"paper_id": {"$in": list(paper_ids)}} if paper_ids else None
        res = self._read(lambda: self.chunks.query(query_embeddings=[query_vec.tolist()], n_results=n, where=where,
                                                   include=["documents", "metadatas", "distances"]))
        return [ChunkHit(cid, m["paper_id"], doc, int(m["index"]), 1.0 - float(d))
                for cid, doc, m, d in zip(res["ids"][0], res["documents"][0], res["metadatas"][0],
                                          res["distances"][0])]

    def chunk_rows(self, records: dict[str, PaperRecord]) -> dict[str, list[tuple[str, str, int, np.ndarray]]]:
        """All chunks (id, text, index, vector) of the given papers, in reading order, read by
        the ids their records list (primary-key lookups, not a metadata scan)."""
        out: dict[str, list] = {pid: [] for pid in records}
        ids = [cid for rec in records.values() for cid in rec.chunk_ids]
        owner = {cid: pid for pid, rec in records.items() for cid in rec.chunk_ids}
        for part in _pages(ids, ID_PAGE):
            got = self._read(lambda part=part: self.chunks.get(ids=list(part),
                                                               include=["documents", "metadatas", "embeddings"]))
            for cid, doc, meta, emb in zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"]):
                out[owner[cid]].append((cid, doc, int(meta["index"]), np.asarray(emb, dtype=np.float32)))
        for rows in out.values():
            rows.sort(key=lambda r: r[2])
        return out

    def chunks_of(self, paper_ids: Sequence[str]) -> dict[str, list[tuple[str, str, int, np.ndarray]]]:
        """All chunks (id, text, index, vector) of the given papers, in reading order."""
        if not paper_ids:
            return {}
        rows = self.chunk_rows(self.paper_records(paper_ids))
        return {pid: rows.get(pid, []) for pid in paper_ids}

    def paper_vectors(self, paper_ids: Sequence[str]) -> dict[str, np.ndarray]:
        got = self._read(lambda: self.papers.get(ids=list(paper_ids), include=["embeddings"]))
        return {pid: np.asarray(e, dtype=np.float32) for pid, e in zip(got["ids"], got["embeddings"])}


class PaperList(Sequence):
    """Papers in title order, read a page at a time (`PaperStore.list_papers`). Without a
    search it pages through the lexicon's title index; with one it holds the matching ids."""

    def __init__(self, store: PaperStore, ids: list[str] | None, lexicon: Lexicon):
        self.store, self._ids, self.lexicon = store, ids, lexicon

    def __len__(self) -> int:
        return self.lexicon.count() if self._ids is None else len(self._ids)

    def _ids_between(self, start: int, stop: int) -> list[str]:
        if self._ids is not None:
            return self._ids[start:stop]
        out: list[str] = []
        after = None
        pos = 0
        while pos < stop:
            rows = self.lexicon.titles_page(after, min(5000, stop - pos) if pos >= start else min(5000, start - pos))
            if not rows:
                break
            if pos + len(rows) > start:
                out.extend(r[2] for r in rows[max(0, start - pos):])
            pos += len(rows)
            after = rows[-1][:2]
        return out[: stop - start]

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            ids = self._ids_between(start, stop)
            found = self.store.get_papers(ids)
            return [found[pid] for pid in ids if pid in found]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        got = self[i:i + 1]
        if not got:
            raise IndexError(i)
        return got[0]

    def __iter__(self) -> Iterator[Paper]:
        if self._ids is not None:
            for part in _pages(self._ids, ID_PAGE):
                found = self.store.get_papers(part)
                yield from (found[pid] for pid in part if pid in found)
            return
        after = None
        while True:
            rows = self.lexicon.titles_page(after, ID_PAGE)
            if not rows:
                return
            ids = [r[2] for r in rows]
            found = self.store.get_papers(ids)
            yield from (found[pid] for pid in ids if pid in found)
            after = rows[-1][:2]


class _Writer:
    """The thread that writes ingest windows to Chroma while the next one is embedded.
    At most one window waits for it, so memory stays bounded."""

    def __init__(self, store: PaperStore, records, report: IngestReport, bar):
        import queue

        self.store, self.records, self.report, self.bar = store, records, report, bar
        self.queue: queue.Queue = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="paper-rag-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # drain: nothing more is written after a failure
            window, new_chunks, emb = item
            try:
                self.store._write_window(window, new_chunks, emb, self.records, self.report)
                if self.bar is not None:
                    self.bar.update(len(window))
            except BaseException as exc:  # noqa: BLE001 - handed to the ingesting thread
                self.error = exc

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, item) -> None:
        import queue

        while self.thread.is_alive():
            try:
                self.queue.put(item, timeout=0.5)
                return
            except queue.Full:  # the writer is still busy: make sure it has not failed
                self.check()
        self.check()

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        self.check()


def _pages(items: Sequence, size: int) -> Iterator[Sequence]:
    for s in range(0, len(items), size):
        yield items[s:s + size]


def _paper_from_record(pid: str, abstract: str, meta: dict[str, Any]) -> Paper:
    try:
        return Paper(id=pid, title=meta["title"], abstract=abstract, url=meta.get("url"),
                     code_urls=tuple(json.loads(meta.get("code_urls", "[]"))),
                     authors=tuple(json.loads(meta.get("authors", "[]"))), year=meta.get("year"),
                     metadata=json.loads(meta.get("extra", "{}")))
    except (KeyError, ValueError) as exc:
        raise IndexCorruptError(f"paper record '{pid}' in the index is corrupt ({exc})",
                                "Rebuild the index with `rag ingest --rebuild FILE...`.") from None
