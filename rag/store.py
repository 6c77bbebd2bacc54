"""The Chroma index: one collection of chunks, one of papers.

The paper record is written after its chunks and lists their ids, so it doubles as a
commit marker: a paper without a record is redone on the next ingest, and chunks no
record points at are swept. Ids derive from content, so unchanged papers cost nothing.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import urlparse

import numpy as np

from .chunking import Chunker
from .embeddings import MAX_TOKENS, CachedEmbedder, EmbeddingCache, get_embedder
from .errors import ConfigError, IndexCorruptError, IndexMismatchError, IndexMissingError, RagError
from .settings import Settings, redact_url
from .types import Chunk, Paper

SCHEMA_VERSION = 1
ProgressFactory = Callable[..., Any]


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

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.chunks_deleted)

    def summary(self) -> str:
        return (f"{self.papers_in} papers: {len(self.added)} added, {len(self.updated)} updated, "
                f"{self.unchanged} unchanged; {self.chunks_embedded} chunks embedded, "
                f"{self.chunks_deleted} removed in {self.seconds:.1f}s")


@dataclass
class ChunkHit:
    chunk_id: str
    paper_id: str
    text: str
    index: int
    score: float


def make_client(settings: Settings):
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=True)
    import chromadb.errors

    if settings.chroma_url:
        url = urlparse(settings.chroma_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"RAG_CHROMA_URL '{settings.chroma_url}' is not an http(s)://host:port URL")
        try:
            return chromadb.HttpClient(host=url.hostname, port=url.port or (443 if url.scheme == "https" else 8000),
                                       ssl=url.scheme == "https", settings=chroma_settings)
        except Exception as exc:  # the client checks the server at construction
            raise ConfigError(f"cannot reach the Chroma server at {redact_url(settings.chroma_url)} ({type(exc).__name__})",
                              "Start it with `chroma run --path DIR --port PORT`, or unset RAG_CHROMA_URL "
                              "to use the embedded store.") from None
    path = settings.chroma_path
    try:
        path.mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=str(path), settings=chroma_settings)
    except (OSError, chromadb.errors.ChromaError, BaseException) as exc:
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        raise IndexCorruptError(f"the index at {path} cannot be opened ({type(exc).__name__}: {exc})") from None


def content_hash(paper: Paper, chunker_signature: str) -> str:
    blob = json.dumps([paper.title, paper.abstract, paper.url, list(paper.authors), paper.year,
                       paper.metadata, chunker_signature], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class PaperStore:
    def __init__(self, settings: Settings, embedder=None, client=None):
        self.settings = settings
        self.embedder = embedder if embedder is not None else get_embedder(settings)
        self._ingest_embedder: CachedEmbedder | None = None
        self.client = client if client is not None else make_client(settings)
        self._chunker: Chunker | None = None
        self._write_lock = threading.Lock()
        self._papers_cache: tuple[Any, dict[str, Paper]] | None = None
        base = settings.collection
        self.chunks = self._collection(f"{base}_chunks")
        self.papers = self._collection(f"{base}_papers")

    # --- set-up ----------------------------------------------------------
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

    def count(self) -> int:
        return self.papers.count()

    def require_papers(self) -> None:
        if self.count() == 0:
            raise IndexMissingError(f"the index at {self.location} has no papers yet")

    def revision(self) -> str:
        """Changes whenever the set of papers changes (used to refresh derived indexes)."""
        meta = self.client.get_collection(self.papers.name, embedding_function=None).metadata or {}
        return f"{meta.get('revision', 0)}:{self.papers.count()}"

    def _bump_revision(self) -> None:
        meta = dict(self.client.get_collection(self.papers.name, embedding_function=None).metadata or {})
        meta.pop("hnsw:space", None)
        meta["revision"] = uuid.uuid4().hex  # unique, so two copies of an index never share one
        self.papers.modify(metadata=meta)

    # --- ingest ------------------------------------------------------------
    def ingest(self, papers: Sequence[Paper], progress: ProgressFactory | None = None,
               replace_all: bool = False) -> IngestReport:
        """Add new papers, replace changed ones; unchanged ones cost a hash comparison."""
        start = time.perf_counter()
        with self._write_lock:
            report = self._ingest(papers, progress, replace_all)
        report.seconds = time.perf_counter() - start
        return report

    def _ingest(self, papers: Sequence[Paper], progress, replace_all: bool) -> IngestReport:
        report = IngestReport(papers_in=len(papers))
        signature = self.chunker.signature
        records = self._paper_records()
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
        if replace_all:
            keep = {p.id for p in papers}
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

    def delete_papers(self, paper_ids: Iterable[str], bump: bool = True) -> None:
        ids = list(paper_ids)
        if not ids:
            return
        self.chunks.delete(where={"paper_id": {"$in": ids}})
        self.papers.delete(ids=ids)
        if bump:
            self._bump_revision()
            self._papers_cache = None

    def _paper_records(self) -> dict[str, dict[str, Any]]:
        got = self.papers.get(include=["metadatas"])
        return {pid: {"content_hash": m.get("content_hash"), "chunk_ids": json.loads(m.get("chunk_ids", "[]"))}
                for pid, m in zip(got["ids"], got["metadatas"])}

    @staticmethod
    def _all_ids(col) -> list[str]:
        return col.get(include=[])["ids"]

    # --- reads -------------------------------------------------------------
    def all_papers(self, revision: str | None = None) -> dict[str, Paper]:
        """Every paper, cached until the index revision changes (pass it if already known)."""
        rev = revision or self.revision()
        if self._papers_cache is None or self._papers_cache[0] != rev:
            got = self.papers.get(include=["documents", "metadatas"])
            papers = {pid: _paper_from_record(pid, doc, meta)
                      for pid, doc, meta in zip(got["ids"], got["documents"], got["metadatas"])}
            self._papers_cache = (rev, papers)
        return self._papers_cache[1]

    def query_chunks(self, query_vec: np.ndarray, n: int, paper_ids: Sequence[str] | None = None) -> list[ChunkHit]:
        # Chroma returns fewer than n results when it holds fewer: no count() on the hot path.
        where = {"paper_id": {"$in": list(paper_ids)}} if paper_ids else None
        res = self.chunks.query(query_embeddings=[query_vec.tolist()], n_results=n, where=where,
                                include=["documents", "metadatas", "distances"])
        return [ChunkHit(cid, m["paper_id"], doc, int(m["index"]), 1.0 - float(d))
                for cid, doc, m, d in zip(res["ids"][0], res["documents"][0], res["metadatas"][0],
                                          res["distances"][0])]

    def chunks_of(self, paper_ids: Sequence[str]) -> dict[str, list[tuple[str, str, int, np.ndarray]]]:
        """All chunks (id, text, index, vector) of the given papers, in reading order."""
        if not paper_ids:
            return {}
        got = self.chunks.get(where={"paper_id": {"$in": list(paper_ids)}},
                              include=["documents", "metadatas", "embeddings"])
        out: dict[str, list] = {pid: [] for pid in paper_ids}
        for cid, doc, meta, emb in zip(got["ids"], got["documents"], got["metadatas"], got["embeddings"]):
            out.setdefault(meta["paper_id"], []).append((cid, doc, int(meta["index"]), np.asarray(emb, dtype=np.float32)))
        for rows in out.values():
            rows.sort(key=lambda r: r[2])
        return out

    def paper_vectors(self, paper_ids: Sequence[str]) -> dict[str, np.ndarray]:
        got = self.papers.get(ids=list(paper_ids), include=["embeddings"])
        return {pid: np.asarray(e, dtype=np.float32) for pid, e in zip(got["ids"], got["embeddings"])}


def _paper_from_record(pid: str, abstract: str, meta: dict[str, Any]) -> Paper:
    try:
        return Paper(id=pid, title=meta["title"], abstract=abstract, url=meta.get("url"),
                     code_urls=tuple(json.loads(meta.get("code_urls", "[]"))),
                     authors=tuple(json.loads(meta.get("authors", "[]"))), year=meta.get("year"),
                     metadata=json.loads(meta.get("extra", "{}")))
    except (KeyError, ValueError) as exc:
        raise RagError(f"paper record '{pid}' in the index is corrupt ({exc})",
                       "Rebuild the index with `rag ingest --rebuild`.") from None
