"""Hybrid retrieval: dense candidates from Chroma (`rag.dense`) plus BM25 over papers, fused per paper.

Ranking papers rather than chunks keeps one long abstract from crowding out the
others, which is what multi-paper questions need. BM25 is read from the lexicon's
memory-mapped build (`rag.lexicon`); the k retrieved papers and their chunks are read
from the store by id. Nothing per question grows with the corpus except the BM25
columns of the question's terms.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .dense import DenseSearch
from .lexicon import LexicalIndex
from .settings import Settings
from .store import PaperStore
from .text import terms
from .types import Context, Passage

log = logging.getLogger(__name__)


@dataclass
class Retrieval:
    question: str
    contexts: list[Context]
    query_vec: np.ndarray
    idf: dict[str, float] = field(default_factory=dict)
    timings_ms: dict[str, float] = field(default_factory=dict)
    revision: str = ""  # the index revision the contexts were read at
    term_idf: Callable[[str], float] | None = None  # any term's IDF over the whole corpus (BM25's)


class Retriever:
    def __init__(self, settings: Settings, store: PaperStore):
        self.settings = settings
        self.store = store
        self.dense = DenseSearch(settings, store)
        self._lexical: tuple[str, LexicalIndex, bool, float] | None = None
        self._lock = threading.Lock()

    def lexical(self, revision: str | None = None) -> LexicalIndex:
        """The BM25 index for the store's revision. While another writer holds the data dir
        this may be the latest build before it (the writer builds the next one when it is
        done); that answer is kept for at most two seconds before looking again."""
        rev = revision or self.store.revision()
        with self._lock:
            cached = self._lexical
            if cached is not None and cached[0] == rev and (cached[2] or time.monotonic() - cached[3] < 2.0):
                return cached[1]
            index, current = self.store.lexical(rev)
            self._lexical = (rev, index, current, time.monotonic())
            return index

    def retrieve(self, question: str, k: int | None = None, paper_ids: Sequence[str] | None = None) -> Retrieval:
        s = self.settings
        k = k or s.k
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self.store.sync()  # another process may have written since the last question
        qvec = self.store.embedder.embed_one(question)
        t1 = time.perf_counter()
        timings["embed_ms"] = (t1 - t0) * 1000

        rev = self.store.revision()  # one look per question
        dense_rank = self.dense.rank(qvec, s.fetch_k, rev, paper_ids)
        t2 = time.perf_counter()
        timings["dense_ms"] = (t2 - t1) * 1000

        lex = self.lexical(rev)
        qterms = terms(question)
        scores = lex.scores(qterms)
        if paper_ids:  # ranked among the allowed papers only, however far down the whole corpus they are
            scores = lex.restrict(scores, paper_ids)
        top = lex.top(scores, s.fetch_k * 2)  # the argsort's first 2*fetch_k positive scores
        top_ids = [lex.ids[int(i)] for i in top]
        lex_rank = top_ids[: s.fetch_k]
        lex_score = {pid: float(scores[i]) for pid, i in zip(top_ids, top)}
        t3 = time.perf_counter()
        timings["lexical_ms"] = (t3 - t2) * 1000

        fused: dict[str, float] = {}
        for w, ranking in ((s.dense_weight, dense_rank), (s.lexical_weight, lex_rank)):
            for r, pid in enumerate(ranking):
                fused[pid] = fused.get(pid, 0.0) + w / (s.rrf_k + r + 1)
        best_norm = (s.dense_weight + s.lexical_weight) / (s.rrf_k + 1)
        candidates = sorted(fused, key=lambda p: -fused[p])[: max(k * 2, k + 3)]
        chosen = self._diversify(candidates, fused, k)

        records = self.store.paper_records(chosen)
        chunk_rows = self.dense.chunk_rows(records, rev)
        contexts: list[Context] = []
        for pid in chosen:
            rec = records.get(pid)
            if rec is None:  # removed by a concurrent ingest between the two reads
                continue
            p = rec.paper
            passages = [Passage(cid, text, idx, float(vec @ qvec)) for cid, text, idx, vec in chunk_rows.get(pid, [])]
            contexts.append(Context(
                n=len(contexts) + 1, paper_id=pid, title=p.title, abstract=p.abstract,
                score=fused[pid] / best_norm, url=p.url, code_urls=p.code_urls,
                dense=max((x.score for x in passages), default=0.0), lexical=lex_score.get(pid, 0.0),
                passages=passages, rank=len(contexts) + 1))
        timings["fuse_ms"] = (time.perf_counter() - t3) * 1000
        timings["retrieve_ms"] = (time.perf_counter() - t0) * 1000
        idf = lex.idf_of(qterms)
        return Retrieval(question, contexts, qvec, idf, timings, revision=rev, term_idf=lex.term_idf)

    def _diversify(self, candidates: list[str], fused: dict[str, float], k: int) -> list[str]:
        """Maximal marginal relevance over paper vectors; lambda=1 keeps the fused order."""
        lam = self.settings.mmr_lambda
        if lam >= 1.0 or len(candidates) <= k:
            return candidates[:k]
        vecs = self.store.paper_vectors(candidates)
        top = max(fused[c] for c in candidates)
        chosen: list[str] = []
        pool = list(candidates)
        while pool and len(chosen) < k:
            def mmr(c: str) -> float:
                sim = max((float(vecs[c] @ vecs[x]) for x in chosen if c in vecs and x in vecs), default=0.0)
                return lam * fused[c] / top - (1 - lam) * sim
            best = max(pool, key=mmr)
            chosen.append(best)
            pool.remove(best)
        return chosen
