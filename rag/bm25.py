"""BM25 as a sparse matrix (CSC: one column of scores per term), built once per index
revision and memory-mapped when read, so a query touches only its own terms' columns.

Scores are bm25s's "lucene" BM25 (k1 = 1.2, b = 0.75), computed the way bm25s computes them
(same float64 steps, stored as float32, query terms summed in order), so rankings are the same
as with an in-memory bm25s index over the same documents. `rag.lexicon` keeps the documents.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

K1 = 1.2
B = 0.75


def _idf(df: int, n_docs: int) -> float:
    return math.log(1 + (n_docs - df + 0.5) / (df + 0.5))


# --- the BM25 matrix ----------------------------------------------------------------------------

def build_matrix(doc_terms: Sequence[np.ndarray], n_terms: int, step: int = 20_000) -> dict:
    """CSC matrix (term -> the documents containing it, with their BM25 weight) for documents
    given as arrays of term ids. Memory stays near the size of the result: documents are
    counted `step` at a time."""
    n_docs = len(doc_terms)
    lengths = np.fromiter((len(d) for d in doc_terms), dtype=np.int64, count=n_docs)
    avgdl = lengths.mean() if n_docs else np.float64(0.0)  # np.float64, as in bm25s
    doc_parts: list[np.ndarray] = []
    term_parts: list[np.ndarray] = []
    tf_parts: list[np.ndarray] = []
    width = max(n_terms, 1)
    for s in range(0, n_docs, step):
        part = [np.asarray(d, dtype=np.int64) for d in doc_terms[s:s + step]]
        ln = lengths[s:s + step]
        if not ln.sum():
            continue
        doc = np.repeat(np.arange(s, s + len(part), dtype=np.int64), ln)
        key, tf = np.unique(doc * width + np.concatenate(part), return_counts=True)
        doc_parts.append((key // width).astype(np.int32))
        term_parts.append((key % width).astype(np.int32))
        tf_parts.append(tf.astype(np.int32))
        del doc, key, part
    doc = np.concatenate(doc_parts) if doc_parts else np.zeros(0, np.int32)
    term = np.concatenate(term_parts) if term_parts else np.zeros(0, np.int32)
    tf = np.concatenate(tf_parts) if tf_parts else np.zeros(0, np.int32)
    del doc_parts, term_parts, tf_parts
    df = np.bincount(term, minlength=n_terms).astype(np.int32) if n_terms else np.zeros(0, np.int32)
    # idf as bm25s computes it: math.log per document frequency, stored as float32.
    uniq, inverse = np.unique(df, return_inverse=True)
    idf = np.asarray([_idf(int(v), n_docs) if v else 0.0 for v in uniq], dtype=np.float32)[inverse.reshape(-1)]
    # tf / (k1 * ((1 - b) + b * l_d / l_avg) + tf) in float64, times the float32 idf, stored as float32.
    denom = K1 * ((1 - B) + B * lengths / avgdl) if avgdl else np.zeros(n_docs)
    tf64 = tf.astype(np.float32).astype(np.float64)
    data = (idf[term].astype(np.float64) * (tf64 / (denom[doc] + tf64))).astype(np.float32)
    del tf64, tf
    order = np.argsort(term, kind="stable")
    indptr = np.zeros(n_terms + 1, dtype=np.int64)
    np.cumsum(df, out=indptr[1:])
    return {"data": data[order], "indices": doc[order], "indptr": indptr, "df": df,
            "n_docs": n_docs, "n_terms": n_terms, "avgdl": float(avgdl)}


class _Ids(Sequence):
    """Paper ids of a BM25 build, decoded on access from one UTF-8 blob (memory-mapped)."""

    def __init__(self, blob, offsets):
        self._blob, self._off = blob, offsets

    def __len__(self) -> int:
        return len(self._off) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        return bytes(self._blob[int(self._off[i]):int(self._off[i + 1])]).decode("utf-8")


def _pack_ids(ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [pid.encode("utf-8") for pid in ids]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


class LexicalIndex:
    """BM25 over title + abstract of every paper at one index revision.

    `term_ids` maps query terms to term ids (SQLite for a build on disk, a dict in memory);
    the matrix may be memory-mapped. `revision` is the index revision it was built at."""

    def __init__(self, ids: Sequence[str], matrix: dict, term_ids, revision: str = "", folder: Path | None = None):
        self.ids = ids
        self.data, self.indices, self.indptr, self.df = (matrix[k] for k in ("data", "indices", "indptr", "df"))
        self.n_docs = int(matrix["n_docs"])
        self.n_terms = int(matrix["n_terms"])
        self._term_ids = term_ids
        self.revision = revision
        self.folder = folder
        n = max(self.n_docs, 1)
        self._n_for_idf = n
        self.oov_idf = math.log(1 + (n + 0.5) / 0.5)
        self._positions: dict[str, int] | None = None

    @classmethod
    def from_documents(cls, ids: Sequence[str], docs: Sequence[Sequence[str]], revision: str = "") -> LexicalIndex:
        """An index in memory from token lists (tests, small throw-away indexes)."""
        vocab: dict[str, int] = {}
        arrays = [np.fromiter((vocab.setdefault(t, len(vocab)) for t in d), dtype=np.int32, count=len(d)) for d in docs]
        matrix = build_matrix(arrays, len(vocab))
        return cls(list(ids), matrix, lambda ts: {t: vocab[t] for t in ts if t in vocab}, revision)

    def _known(self, query_terms: Sequence[str]) -> list[int]:
        """Term ids of the query terms the indexed papers contain, in order, repeats kept."""
        if not self.n_docs or not query_terms:
            return []
        found = self._term_ids(list(dict.fromkeys(query_terms)))
        out = []
        for t in query_terms:
            i = found.get(t)
            if i is not None and i < self.n_terms and self.df[i] > 0:
                out.append(int(i))
        return out

    def doc_freq(self, term: str) -> int:
        ids = self._known([term])
        return int(self.df[ids[0]]) if ids else 0

    def term_idf(self, term: str) -> float:
        df = self.doc_freq(term)
        if not df:
            return self.oov_idf
        n = self._n_for_idf
        return math.log(1 + (n - df + 0.5) / (df + 0.5))

    def idf_of(self, query_terms: Iterable[str]) -> dict[str, float]:
        """idf of each distinct term (one lookup for all of them)."""
        distinct = list(dict.fromkeys(query_terms))
        found = self._term_ids(distinct) if self.n_docs and distinct else {}
        n = self._n_for_idf
        out = {}
        for t in distinct:
            i = found.get(t)
            df = int(self.df[i]) if i is not None and i < self.n_terms else 0
            out[t] = math.log(1 + (n - df + 0.5) / (df + 0.5)) if df else self.oov_idf
        return out

    def scores(self, query_terms: Sequence[str]) -> np.ndarray:
        """BM25 score of every paper (bm25s's `get_scores`: each known query term's column
        added in query order, repeats counted)."""
        out = np.zeros(self.n_docs, dtype=np.float32)
        for t in self._known(query_terms):
            a, e = int(self.indptr[t]), int(self.indptr[t + 1])
            out[self.indices[a:e]] += self.data[a:e]
        return out

    def restrict(self, scores: np.ndarray, paper_ids: Iterable[str]) -> np.ndarray:
        """`scores` with every paper but `paper_ids` set to zero. The id -> position map is
        built on the first call (~10 MiB at 100k papers; unrestricted questions never need it)."""
        if self._positions is None:
            self._positions = {pid: i for i, pid in enumerate(self.ids)}
        keep = [i for i in (self._positions.get(pid) for pid in paper_ids) if i is not None]
        out = np.zeros_like(scores)
        out[keep] = scores[keep]
        return out

    @staticmethod
    def top(scores: np.ndarray, m: int) -> np.ndarray:
        """Positions of the (at most) m best positive scores, best first, ties in index order:
        exactly `[i for i in np.argsort(-scores, kind="stable")[:m] if scores[i] > 0]`, without
        sorting every paper."""
        pos = np.flatnonzero(scores > 0)
        if len(pos) > m:
            vals = scores[pos]
            kth = np.partition(vals, len(vals) - m)[len(vals) - m]  # the m-th largest value
            pos = pos[vals >= kth]
        return pos[np.argsort(-scores[pos], kind="stable")][:m]


# --- the lexicon ---------------------------------------------------------------------------------
