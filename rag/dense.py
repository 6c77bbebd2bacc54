"""Dense candidates from the chunk vectors, or from the paper vectors when the corpus is big.

Chroma's embedded engine loads a collection's whole HNSW graph the first time the
collection is read: 1.2 GB for the 730k chunk vectors of 100k abstracts. Searching the
paper vectors instead (each the mean of its chunk vectors, written at ingest; seven times
fewer) keeps the chunk collection closed while answering: the chunks of the k chosen
papers are cut again from their abstracts (ids checked against the record) and their
vectors read from the ingest's embedding cache. `RAG_DENSE_INDEX=auto` does this once the
index holds more than `RAG_DENSE_PAPERS_ABOVE` chunks, so small corpora keep chunk search.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from .settings import Settings
from .store import ChunkRow, PaperRecord, PaperStore


class DenseSearch:
    def __init__(self, settings: Settings, store: PaperStore):
        self.settings = settings
        self.store = store
        self._unit: tuple[str, str] | None = None  # (revision, unit)
        self._lock = threading.Lock()

    def unit(self, revision: str) -> str:
        """'chunks' or 'papers' for this revision of the index (one metadata read per revision)."""
        choice = self.settings.dense_index
        if choice != "auto":
            return choice
        with self._lock:
            if self._unit is None or self._unit[0] != revision:
                total = self.store.chunks_total()
                big = total is not None and total > self.settings.dense_papers_above
                self._unit = (revision, "papers" if big else "chunks")
            return self._unit[1]

    def rank(self, query_vec: np.ndarray, n: int, revision: str, paper_ids: Sequence[str] | None = None) -> list[str]:
        """Paper ids, best first: by their best chunk among the top n chunks, or by paper vector."""
        if self.unit(revision) == "papers":
            return self.store.query_papers(query_vec, n, paper_ids)
        hits = self.store.query_chunks(query_vec, n, paper_ids)
        return list(dict.fromkeys(h.paper_id for h in hits))

    def chunk_rows(self, records: dict[str, PaperRecord], revision: str) -> dict[str, list[ChunkRow]]:
        """The chunks of the chosen papers, in reading order, with their vectors."""
        if self.unit(revision) == "chunks":
            return self.store.chunk_rows(records)
        out: dict[str, list[ChunkRow]] = {}
        cut = {pid: self.store.chunker.chunk_paper(rec.paper) for pid, rec in records.items()}
        same = {pid: chunks for pid, chunks in cut.items() if [c.id for c in chunks] == records[pid].chunk_ids}
        others = {pid: rec for pid, rec in records.items() if pid not in same}  # cut with other settings
        if others:
            out.update(self.store.chunk_rows(others))
        chunks = [c for cs in same.values() for c in cs]
        if chunks:
            vectors = self.store.ingest_embedder.embed([c.embed_text for c in chunks])
            rows = iter(zip(chunks, vectors))
            for pid, cs in same.items():
                out[pid] = [(c.id, c.text, c.index, np.asarray(v, dtype=np.float32)) for c, v in
                            (next(rows) for _ in cs)]
        return out
