"""Dense candidates over paper vectors: the chunk collection stays closed while answering."""

from __future__ import annotations

import numpy as np
import pytest

from rag.retrieval import Retriever
from rag.settings import Settings
from rag.store import PaperStore

QUESTIONS = [
    "Which system learns a compact Euclidean space where distances measure face similarity?",
    "How can noisy kNN edges be avoided when graph convolutional networks cluster faces?",
    "face swapping with diffusion models",
]


class ClosedCollection:
    """Stands in for the chunk collection: any use fails the test."""

    name = "papers_chunks"

    def __getattr__(self, attr):
        raise AssertionError(f"the chunk collection was read ({attr})")


def _retriever(data_dir, **overrides) -> Retriever:
    settings = Settings(data_dir=data_dir, **overrides)
    return Retriever(settings, PaperStore(settings))


@pytest.fixture(scope="module")
def by_chunks(built_index):
    return _retriever(built_index, dense_index="chunks")


@pytest.mark.parametrize("question", QUESTIONS)
def test_paper_vectors_answer_without_reading_the_chunk_collection(built_index, by_chunks, question):
    papers = _retriever(built_index, dense_index="papers")
    papers.store.chunks = ClosedCollection()
    got = papers.retrieve(question, k=5)
    assert got.contexts, question
    # The passages of a paper are the same chunks, with the same vectors, as the chunk index holds.
    want = by_chunks.store.chunk_rows(by_chunks.store.paper_records([c.paper_id for c in got.contexts]))
    for ctx in got.contexts:
        rows = want[ctx.paper_id]
        assert [p.chunk_id for p in ctx.passages] == [cid for cid, _, _, _ in rows]
        assert [p.text for p in ctx.passages] == [text for _, text, _, _ in rows]
        for p, (_, _, _, vec) in zip(ctx.passages, rows):
            assert p.score == pytest.approx(float(vec @ got.query_vec), abs=1e-5)


def test_paper_vectors_find_the_paper_a_question_paraphrases(built_index):
    papers = _retriever(built_index, dense_index="papers")
    top = [c.paper_id for c in papers.retrieve(QUESTIONS[0], k=3).contexts]
    assert "facenet-a-unified-embedding-for-face-recognition" in top[0], top


def test_auto_switches_to_paper_vectors_above_the_chunk_threshold(built_index):
    small = _retriever(built_index)
    rev = small.store.revision()
    assert small.dense.unit(rev) == "chunks"  # the bundled corpus: ~800 chunks
    total = small.store.chunks_total()
    assert total and total > 100
    big = _retriever(built_index, dense_papers_above=total - 1)
    assert big.dense.unit(rev) == "papers"
    assert _retriever(built_index, dense_papers_above=total).dense.unit(rev) == "chunks"


def test_records_cut_with_other_settings_fall_back_to_the_chunk_collection(built_index, by_chunks):
    # The index was cut at 64 tokens; cutting again at 32 gives other chunk ids, so the rows
    # must come from the chunk collection rather than from a re-cut that does not match.
    other = _retriever(built_index, dense_index="papers", chunk_tokens=32)
    pid = by_chunks.retrieve(QUESTIONS[0], k=1).contexts[0].paper_id
    records = other.store.paper_records([pid])
    assert [c.id for c in other.store.chunker.chunk_paper(records[pid].paper)] != records[pid].chunk_ids
    rows = other.dense.chunk_rows(records, other.store.revision())[pid]
    want = by_chunks.store.chunk_rows(records)[pid]
    assert [r[0] for r in rows] == [r[0] for r in want]
    assert np.allclose(np.stack([r[3] for r in rows]), np.stack([r[3] for r in want]))


def test_paper_vectors_respect_a_restriction_to_some_papers(built_index, by_chunks):
    papers = _retriever(built_index, dense_index="papers")
    allowed = ["edgeface-efficient-face-recognition-model-for", "conditional-image-generation-with-pixelcnn"]
    rev = papers.store.revision()
    assert set(papers.dense.rank(papers.store.embedder.embed_one(QUESTIONS[0]), 40, rev, allowed)) == set(allowed)
    got = papers.retrieve(QUESTIONS[0], k=5, paper_ids=allowed)
    assert {c.paper_id for c in got.contexts} == set(allowed)
