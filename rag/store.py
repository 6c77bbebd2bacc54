"""The Chroma index: one collection of chunks, one of papers.

The paper record is written after its chunks and lists their ids, so it doubles as a
commit marker: a paper without a record is redone on the next ingest, and chunks no
record points at are swept. Ids derive from content, so unchanged papers cost nothing.

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
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np

from .chunking import Chunker
from .corpus import abstract_key, normalise_title
from .embeddings import MAX_TOKENS, CachedEmbedder, EmbeddingCache, get_embedder
from .errors import ConfigError, DataDirError, IndexCorruptError, IndexMismatchError, IndexMissingError
from .index_state import IndexState, read_generation
from .locking import WriteLock
from .settings import Settings, redact_url
from .types import Chunk, Paper

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
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
            port = url.port or (443 if url.scheme == "https" else 8000)
            return chromadb.HttpClient(host=url.hostname or "", port=port, ssl=url.scheme == "https",
                                       settings=chroma_settings)
        except Exception as exc:  # the client checks the server at construction
            raise ConfigError(f"cannot reach the Chroma server at {redact_url(settings.chroma_url)} "
                              f"({type(exc).__name__})",
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


class PaperStore:
    def __init__(self, settings: Settings, embedder=None, client=None):
        self.settings = settings
        self.embedder = embedder if embedder is not None else get_embedder(settings)
        self._ingest_embedder: CachedEmbedder | None = None
        self._chunker: Chunker | None = None
        self._papers_cache: tuple[Any, dict[str, Paper]] | None = None
        # The embedded store (not a server, not an injected client) is reopened when stale.
        self._embedded = client is None and not settings.chroma_url
        self._seen_generation: str | None = None
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
            self._ingest_embedder = CachedEmbedder(
                self.embedder, EmbeddingCache(self.settings.cache_dir / "embeddings.sqlite")
            )
        return self._ingest_embedder

    def _collection(self, name: str):
        model_id = self.embedder.model_id
        col = self.client.get_or_create_collection(
            name, embedding_function=None,
            metadata={"hnsw:space": "cosine", "embedding_model": model_id, "schema": SCHEMA_VERSION})
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
        gen = read_generation(self.settings.data_dir)
        if gen is not None and gen != self._seen_generation:
            self._reopen(self._opened)

    def _reopen(self, seen: int) -> None:
        with self._reopen_lock:
            if self._opened != seen:
                return  # another thread reopened meanwhile
            self._connect()
            self._papers_cache = None
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
            if not lock.outermost or not self._embedded:
                self._writing += 1
                try:
                    yield None
                finally:
                    self._writing -= 1
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

    def count(self) -> int:
        return self._read(lambda: self.papers.count())

    def require_papers(self) -> None:
        if self.count() == 0:
            raise IndexMissingError(f"the index at {self.location} has no papers yet")

    def revision(self) -> str:
        """Changes whenever the set of papers changes (used to refresh derived indexes)."""
        self.sync()

        def read() -> str:
            meta = self.client.get_collection(self.papers.name, embedding_function=None).metadata or {}
            return f"{meta.get('revision', 0)}:{self.papers.count()}"
        return self._read(read)

    def _bump_revision(self) -> None:
        meta = dict(self.client.get_collection(self.papers.name, embedding_function=None).metadata or {})
        meta.pop("hnsw:space", None)
        meta["revision"] = uuid.uuid4().hex  # unique, so two copies of an index never share one
        self.papers.modify(metadata=meta)

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
            if rebuild:
                self.delete_papers(list(self._paper_records()))
            report = self._ingest_locked(papers, progress, replace_all, replace)
        report.seconds = time.perf_counter() - start
        return report

    def _ingest_locked(self, papers: Sequence[Paper], progress, replace_all: bool, replace: bool) -> IngestReport:
        import chromadb.errors

        try:
            return self._ingest(papers, progress, replace_all, replace or replace_all)
        except chromadb.errors.ChromaError as exc:
            raise IndexCorruptError.at(self.settings.data_dir,
                                       f"writing to the index at {self.location} failed ({exc})") from None

    def _screen(self, papers: Sequence[Paper], records: dict[str, dict[str, Any]], replace: bool,
                report: IngestReport, keep: set[str] | None) -> list[Paper]:
        """Conflicts and duplicates against the index (and earlier papers of the same batch)."""
        by_title: dict[str, set[str]] = {}
        by_abstract: dict[str, set[str]] = {}
        titles: dict[str, str] = {}

        def remember(pid: str, title: str, tkey: str, akey: str) -> None:
            titles[pid] = title
            if tkey:
                by_title.setdefault(tkey, set()).add(pid)
            by_abstract.setdefault(akey, set()).add(pid)

        for pid, known in records.items():
            if keep is None or pid in keep:  # with replace_all, the others are about to go
                remember(pid, known["title"], known["title_key"], known["abstract_key"])
        accepted: list[Paper] = []
        batch_ids: set[str] = set()
        for p in papers:
            tkey, akey = normalise_title(p.title), abstract_key(p.abstract)
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

    def _ingest(self, papers: Sequence[Paper], progress, replace_all: bool, replace: bool = False) -> IngestReport:
        report = IngestReport(papers_in=len(papers))
        signature = self.chunker.signature
        records = self._paper_records()
        keep = {p.id for p in papers} if replace_all else None
        papers = self._screen(papers, records, replace, report, keep)
        existing_chunks = set(self._all_ids(self.chunks))
        todo: list[tuple[Paper, str]] = []
        for p in papers:
            h = content_hash(p, signature)
            rec = records.get(p.id)
            if rec and rec["content_hash"] == h and set(rec["chunk_ids"]) <= existing_chunks:
                report.unchanged += 1
            else:
                todo.append((p, h))
        bar = progress(total=sum(1 for _ in todo), desc="Embedding", unit="paper") if progress and todo else None
        batch: list[tuple[Paper, str, list[Chunk]]] = []
        pending_chunks = 0
        for p, h in todo:
            chunks = self.chunker.chunk_paper(p)
            batch.append((p, h, chunks))
            pending_chunks += len(chunks)
            if pending_chunks >= 4 * self.settings.embedding_batch_size:
                self._write_batch(batch, records, existing_chunks, report, bar)
                batch, pending_chunks = [], 0
        if batch:
            self._write_batch(batch, records, existing_chunks, report, bar)
        if bar is not None:
            bar.close()
        if keep is not None:  # replace_all
            stale = [pid for pid in records if pid not in keep]
            if stale:
                self.delete_papers(stale, bump=False)
                report.chunks_deleted += sum(len(records[pid]["chunk_ids"]) for pid in stale)
        report.chunks_deleted += self._sweep_orphans()
        if report.changed:
            self._bump_revision()
            self._papers_cache = None
        return report

    def _write_batch(self, batch, records, existing_chunks: set[str], report: IngestReport, bar) -> None:
        new_chunks = [c for _, _, chunks in batch for c in chunks if c.id not in existing_chunks]
        vectors: dict[str, np.ndarray] = {}
        if new_chunks:
            emb = self.ingest_embedder.embed([c.embed_text for c in new_chunks])
            vectors.update(zip((c.id for c in new_chunks), emb))
            self._add_chunks(new_chunks, emb)
            existing_chunks.update(c.id for c in new_chunks)
        report.chunks_embedded += len(new_chunks)
        reused = [c.id for _, _, chunks in batch for c in chunks if c.id not in vectors]
        report.chunks_reused += len(reused)
        if reused:
            got = self.chunks.get(ids=reused, include=["embeddings"])
            vectors.update(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32)))
        rows = []
        for p, h, chunks in batch:
            mean = np.mean([vectors[c.id] for c in chunks], axis=0)
            mean /= max(float(np.linalg.norm(mean)), 1e-12)
            rows.append((p, mean, self._paper_meta(p, h, chunks)))
        # Paper records go in after their chunks: a record is the commit marker of its paper.
        self.papers.upsert(ids=[p.id for p, _, _ in rows], documents=[p.abstract for p, _, _ in rows],
                           embeddings=[m.tolist() for _, m, _ in rows], metadatas=[meta for _, _, meta in rows])
        stale: list[str] = []
        for p, _, chunks in batch:
            old = records.get(p.id)
            if old:
                keep = {c.id for c in chunks}
                stale.extend(cid for cid in old["chunk_ids"] if cid not in keep)
                report.updated.append(p.id)
            else:
                report.added.append(p.id)
        if stale:
            self.chunks.delete(ids=stale)
            existing_chunks.difference_update(stale)
            report.chunks_deleted += len(stale)
        if bar is not None:
            bar.update(len(batch))

    def _add_chunks(self, chunks: list[Chunk], emb: np.ndarray) -> None:
        step = max(1, min(5000, self.client.get_max_batch_size()))
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
        referenced = {cid for rec in self._paper_records().values() for cid in rec["chunk_ids"]}
        orphans = [cid for cid in self._all_ids(self.chunks) if cid not in referenced]
        if orphans:
            self.chunks.delete(ids=orphans)
        return len(orphans)

    def delete_papers(self, paper_ids: Iterable[str], bump: bool = True, wait: bool = True,
                      on_wait: Callable[[str], None] | None = None) -> None:
        ids = list(paper_ids)
        if not ids:
            return
        with self.writing(wait=wait, on_wait=on_wait):
            self.chunks.delete(where={"paper_id": {"$in": ids}})
            self.papers.delete(ids=ids)
            if bump:
                self._bump_revision()
                self._papers_cache = None

    def _paper_records(self) -> dict[str, dict[str, Any]]:
        """id -> content hash, chunk ids, title and the keys duplicates are found by (computed
        from the record itself when an older index did not store them)."""
        got = self.papers.get(include=["metadatas"])
        records = {}
        lacking = []
        for pid, m in zip(got["ids"], got["metadatas"]):
            title = m.get("title", "")
            records[pid] = {"content_hash": m.get("content_hash"), "chunk_ids": json.loads(m.get("chunk_ids", "[]")),
                            "title": title, "title_key": m.get("title_key", normalise_title(title)),
                            "abstract_key": m.get("abstract_key")}
            if not records[pid]["abstract_key"]:
                lacking.append(pid)
        for s in range(0, len(lacking), 1000):
            docs = self.papers.get(ids=lacking[s:s + 1000], include=["documents"])
            for pid, doc in zip(docs["ids"], docs["documents"]):
                records[pid]["abstract_key"] = abstract_key(doc or "")
        return records

    @staticmethod
    def _all_ids(col) -> list[str]:
        return col.get(include=[])["ids"]

    # --- reads (each retried once through a reopened client, see _read) ----------------
    def all_papers(self, revision: str | None = None) -> dict[str, Paper]:
        """Every paper, cached until the index revision changes (pass it if already known)."""
        rev = revision or self.revision()
        if self._papers_cache is None or self._papers_cache[0] != rev:
            got = self._read(lambda: self.papers.get(include=["documents", "metadatas"]))
            papers = {pid: _paper_from_record(pid, doc, meta)
                      for pid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"])}
            self._papers_cache = (rev, papers)
        return self._papers_cache[1]

    def query_chunks(self, query_vec: np.ndarray, n: int, paper_ids: Sequence[str] | None = None) -> list[ChunkHit]:
        # Chroma returns fewer than n results when it holds fewer: no count() on the hot path.
        where = {"paper_id": {"$in": list(paper_ids)}} if paper_ids else None
        res = self._read(lambda: self.chunks.query(query_embeddings=[query_vec.tolist()], n_results=n, where=where,
                                                   include=["documents", "metadatas", "distances"]))
        return [ChunkHit(cid, m["paper_id"], doc, int(m["index"]), 1.0 - float(d))
                for cid, doc, m, d in zip(res["ids"][0], res["documents"][0], res["metadatas"][0],
                                          res["distances"][0])]

    def chunks_of(self, paper_ids: Sequence[str]) -> dict[str, list[tuple[str, str, int, np.ndarray]]]:
        """All chunks (id, text, index, vector) of the given papers, in reading order."""
        if not paper_ids:
            return {}
        got = self._read(lambda: self.chunks.get(where={"paper_id": {"$in": list(paper_ids)}},
                                                 include=["documents", "metadatas", "embeddings"]))
        out: dict[str, list] = {pid: [] for pid in paper_ids}
        for cid, doc, meta, emb in zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"]):
            out.setdefault(meta["paper_id"], []).append(
                (cid, doc, int(meta["index"]), np.asarray(emb, dtype=np.float32))
            )
        for rows in out.values():
            rows.sort(key=lambda r: r[2])
        return out

    def paper_vectors(self, paper_ids: Sequence[str]) -> dict[str, np.ndarray]:
        got = self._read(lambda: self.papers.get(ids=list(paper_ids), include=["embeddings"]))
        return {pid: np.asarray(e, dtype=np.float32) for pid, e in zip(got["ids"], got["embeddings"])}


def _paper_from_record(pid: str, abstract: str, meta: dict[str, Any]) -> Paper:
    try:
        return Paper(id=pid, title=meta["title"], abstract=abstract, url=meta.get("url"),
                     code_urls=tuple(json.loads(meta.get("code_urls", "[]"))),
                     authors=tuple(json.loads(meta.get("authors", "[]"))), year=meta.get("year"),
                     metadata=json.loads(meta.get("extra", "{}")))
    except (KeyError, ValueError) as exc:
        raise IndexCorruptError(f"paper record '{pid}' in the index is corrupt ({exc})",
                                "Rebuild the index with `rag ingest --rebuild FILE...`.") from None
