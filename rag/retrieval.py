"""Hybrid retrieval: dense chunks from Chroma plus BM25 over papers, fused per paper.

Ranking papers rather than chunks keeps one long abstract from crowding out the
others, which is what multi-paper questions need.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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


class LexicalIndex:
    """BM25 over title + abstract of every paper.

    Persisted beside the vector index: the BM25 matrix is reloaded as long as the store's
    revision is unchanged, and after an ingest only new or changed papers are tokenized
    (tokens are cached per paper by content hash).
    """

    def __init__(self, ids: list[str], docs: list[list[str]]):
        import bm25s

        self.ids = ids
        self.bm25 = bm25s.BM25(k1=1.2, b=0.75)
        if docs:
            self.bm25.index(docs, show_progress=False)
        df: dict[str, int] = {}
        for d in docs:
            for t in set(d):
                df[t] = df.get(t, 0) + 1
        self._set_idf(df, len(docs))

    def _set_idf(self, df: dict[str, int], n_docs: int) -> None:
        n = max(n_docs, 1)
        self.df = df
        self.idf = {t: math.log(1 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}
        self.oov_idf = math.log(1 + (n + 0.5) / 0.5)

    @staticmethod
    def doc_text(p) -> str:
        return f"{p.title} {p.title} {p.abstract}"

    @classmethod
    def load_or_build(cls, papers: dict, revision: str, folder: Path | None) -> LexicalIndex:
        if folder is not None:
            loaded = cls._load(folder, revision)
            if loaded is not None:
                return loaded
        cache = _TokenCache(folder / "tokens.json" if folder else None)
        ids = list(papers)
        docs = [cache.tokens(pid, cls.doc_text(papers[pid])) for pid in ids]
        index = cls(ids, docs)
        if folder is not None:
            try:
                cache.save(keep=set(ids))
                index._save(folder, revision)
            except OSError:
                pass  # another process is writing it, or the disk is read-only: still usable in memory
        return index

    def _save(self, folder: Path, revision: str) -> None:
        tmp = folder / f"bm25.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        self.bm25.save(str(tmp))
        (tmp / "lexical.json").write_text(json.dumps({"revision": revision, "ids": self.ids, "df": self.df}))
        shutil.rmtree(folder / "bm25", ignore_errors=True)
        tmp.replace(folder / "bm25")

    @classmethod
    def _load(cls, folder: Path, revision: str) -> LexicalIndex | None:
        import bm25s

        meta_path = folder / "bm25" / "lexical.json"
        if not meta_path.exists():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta["revision"] != revision:
                return None  # the index changed since: rebuilt below, as usual
            index = cls.__new__(cls)
            index.ids = list(meta["ids"])
            index.bm25 = bm25s.BM25.load(str(folder / "bm25"), mmap=False)
            index._set_idf(dict(meta["df"]), len(index.ids))
            if len(index.ids) != index.bm25.scores["num_docs"]:
                raise ValueError(f"{len(index.ids)} ids for {index.bm25.scores['num_docs']} documents")
            return index
        except Exception as exc:  # noqa: BLE001 - a cache: whatever is wrong with it, rebuild it
            log.warning("the lexical (BM25) cache in %s was damaged (%s: %s); rebuilding it from the index",
                        folder / "bm25", type(exc).__name__, str(exc)[:120])
            return None

    def term_idf(self, term: str) -> float:
        return self.idf.get(term, self.oov_idf)

    def scores(self, query_terms: list[str]) -> np.ndarray:
        known = [t for t in query_terms if t in self.idf]
        if not self.ids or not known:
            return np.zeros(len(self.ids), dtype=np.float32)
        return np.asarray(self.bm25.get_scores(known), dtype=np.float32)


class _TokenCache:
    """Stemmed tokens per paper, keyed by a hash of the text they came from."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text())
                if not isinstance(data, dict):
                    raise ValueError(f"a JSON {type(data).__name__}, not an object")
                self.entries = {k: v for k, v in data.items()
                                if isinstance(v, list) and len(v) == 2 and isinstance(v[1], list)}
            except (OSError, ValueError) as exc:
                log.warning("the token cache %s was damaged (%s); rebuilding it", path, str(exc)[:120])
                self.entries = {}

    def tokens(self, pid: str, text: str) -> list[str]:
        h = hashlib.sha1(text.encode()).hexdigest()[:16]
        hit = self.entries.get(pid)
        if hit and hit[0] == h:
            return hit[1]
        toks = terms(text)
        self.entries[pid] = [h, toks]
        return toks

    def save(self, keep: set[str]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {k: v for k, v in self.entries.items() if k in keep}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)


class Retriever:
    def __init__(self, settings: Settings, store: PaperStore):
        self.settings = settings
        self.store = store
        self._lexical: tuple[str, LexicalIndex] | None = None
        self._lock = threading.Lock()

    def lexical(self, revision: str | None = None) -> LexicalIndex:
        rev = revision or self.store.revision()
        with self._lock:
            if self._lexical is None or self._lexical[0] != rev:
                folder = self.settings.data_dir / "lexical" / self.settings.collection
                self._lexical = (rev, LexicalIndex.load_or_build(self.store.all_papers(rev), rev, folder))
            return self._lexical[1]

    def retrieve(self, question: str, k: int | None = None, paper_ids: Sequence[str] | None = None) -> Retrieval:
        s = self.settings
        k = k or s.k
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        self.store.sync()  # another process may have written since the last question
        qvec = self.store.embedder.embed_one(question)
        t1 = time.perf_counter()
        timings["embed_ms"] = (t1 - t0) * 1000

        hits = self.store.query_chunks(qvec, s.fetch_k, paper_ids)
        dense_rank: list[str] = list(dict.fromkeys(h.paper_id for h in hits))
        t2 = time.perf_counter()
        timings["dense_ms"] = (t2 - t1) * 1000

        rev = self.store.revision()  # one look per question: both caches below check it
        lex = self.lexical(rev)
        qterms = terms(question)
        scores = lex.scores(qterms)
        allowed = set(paper_ids) if paper_ids else None
        order = np.argsort(-scores, kind="stable")
        lex_rank = [lex.ids[i] for i in order[: s.fetch_k * 2]
                    if scores[i] > 0 and (allowed is None or lex.ids[i] in allowed)][: s.fetch_k]
        lex_score = {lex.ids[i]: float(scores[i]) for i in order[: s.fetch_k * 2]}
        t3 = time.perf_counter()
        timings["lexical_ms"] = (t3 - t2) * 1000

        fused: dict[str, float] = {}
        for w, ranking in ((s.dense_weight, dense_rank), (s.lexical_weight, lex_rank)):
            for r, pid in enumerate(ranking):
                fused[pid] = fused.get(pid, 0.0) + w / (s.rrf_k + r + 1)
        best_norm = (s.dense_weight + s.lexical_weight) / (s.rrf_k + 1)
        candidates = sorted(fused, key=lambda p: -fused[p])[: max(k * 2, k + 3)]
        chosen = self._diversify(candidates, fused, k)

        papers = self.store.all_papers(rev)
        chunk_rows = self.store.chunks_of(chosen)
        contexts: list[Context] = []
        for pid in chosen:
            p = papers.get(pid)
            if p is None:  # removed by a concurrent ingest between the two reads
                continue
            passages = [Passage(cid, text, idx, float(vec @ qvec)) for cid, text, idx, vec in chunk_rows.get(pid, [])]
            contexts.append(Context(
                n=len(contexts) + 1, paper_id=pid, title=p.title, abstract=p.abstract,
                score=fused[pid] / best_norm, url=p.url, code_urls=p.code_urls,
                dense=max((x.score for x in passages), default=0.0), lexical=lex_score.get(pid, 0.0),
                passages=passages, rank=len(contexts) + 1))
        timings["fuse_ms"] = (time.perf_counter() - t3) * 1000
        timings["retrieve_ms"] = (time.perf_counter() - t0) * 1000
        idf = {t: lex.term_idf(t) for t in set(qterms)}
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
