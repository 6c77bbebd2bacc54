"""The Chroma index: one collection of chunks, one of papers, and the lexicon beside them.
Writing lives in `rag.ingest`, the lexicon's upkeep in `rag.lexicon_sync`, opening Chroma in
`rag.chroma_client`; `PaperStore` brings them together.

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
import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from .chroma_client import check_index_file, make_client
from .chunking import Chunker
from .corpus import abstract_key, normalise_title
from .embeddings import MAX_TOKENS, CachedEmbedder, EmbeddingCache, get_embedder
from .errors import IndexCorruptError, IndexMismatchError, IndexMissingError
from .index_state import IndexState, read_generation, read_marker
from .ingest import (
    ID_PAGE,
    PAGE,
    WINDOW_BATCHES,
    IngestIssue,
    IngestMixin,
    IngestReport,
    _pages,
    content_hash,
)
from .lexicon import Lexicon
from .lexicon_sync import LexiconSync, PaperList
from .locking import WriteLock
from .settings import Settings
from .types import Paper

__all__ = ["ChunkHit", "ChunkRow", "IngestIssue", "IngestReport", "PaperList", "PaperRecord", "PaperStore",
           "check_index_file",
           "content_hash", "make_client", "ID_PAGE", "PAGE", "WINDOW_BATCHES"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


ChunkRow = tuple[str, str, int, np.ndarray]  # (chunk id, text, index in its paper, vector)


@dataclass
class ChunkHit:
    chunk_id: str
    paper_id: str
    text: str
    index: int
    score: float


@dataclass
class PaperRecord:
    """A paper as stored: the paper, the chunk ids its record lists, its content hash."""

    paper: Paper
    chunk_ids: list[str]
    content_hash: str | None


class PaperStore(IngestMixin, LexiconSync):
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
            cache = EmbeddingCache(self.settings.cache_dir / "embeddings.sqlite")
            self._ingest_embedder = CachedEmbedder(self.embedder, cache)
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
            n = self.papers.count()
            return f"{self._collection_meta().get('revision', 0)}:{n}", n
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

    # --- reads (each retried once through a reopened client, see _read) ----------------
    def paper_records(self, paper_ids: Sequence[str]) -> dict[str, PaperRecord]:
        """The records of the given papers (missing ids are left out), read by id."""
        ids = list(dict.fromkeys(paper_ids))
        if not ids:
            return {}
        out: dict[str, PaperRecord] = {}
        for part in _pages(ids, ID_PAGE):
            got = self._read(partial(self.papers.get, ids=list(part), include=["documents", "metadatas"]))
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

    def chunk_rows(self, records: dict[str, PaperRecord]) -> dict[str, list[ChunkRow]]:
        """All chunks (id, text, index, vector) of the given papers, in reading order, read by
        the ids their records list (primary-key lookups, not a metadata scan)."""
        out: dict[str, list[ChunkRow]] = {pid: [] for pid in records}
        ids = [cid for rec in records.values() for cid in rec.chunk_ids]
        owner = {cid: pid for pid, rec in records.items() for cid in rec.chunk_ids}
        for part in _pages(ids, ID_PAGE):
            got = self._read(partial(self.chunks.get, ids=list(part), include=["documents", "metadatas", "embeddings"]))
            for cid, doc, meta, emb in zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"]):
                out[owner[cid]].append((cid, doc, int(meta["index"]), np.asarray(emb, dtype=np.float32)))
        for rows in out.values():
            rows.sort(key=lambda r: r[2])
        return out

    def chunks_of(self, paper_ids: Sequence[str]) -> dict[str, list[ChunkRow]]:
        """All chunks (id, text, index, vector) of the given papers, in reading order."""
        if not paper_ids:
            return {}
        rows = self.chunk_rows(self.paper_records(paper_ids))
        return {pid: rows.get(pid, []) for pid in paper_ids}

    def query_papers(self, query_vec: np.ndarray, n: int, paper_ids: Sequence[str] | None = None) -> list[str]:
        """Paper ids by the similarity of their mean chunk vector, best first."""
        res = self._read(lambda: self.papers.query(query_embeddings=[query_vec.tolist()], n_results=n,
                                                   ids=list(paper_ids) if paper_ids else None, include=[]))
        return list(res["ids"][0])

    def chunks_total(self) -> int | None:
        """The chunk count the last ingest recorded (collection metadata: no chunk is read)."""
        total = self._read(self._collection_meta).get("chunks_total")
        return int(total) if total is not None else None

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
