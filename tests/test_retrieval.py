"""Hybrid retrieval over the real bundled index."""

from __future__ import annotations

import numpy as np
import pytest

from rag.corpus import load_bundled
from rag.retrieval import LexicalIndex, Retriever
from rag.settings import Settings
from rag.store import PaperStore
from rag.text import terms
from rag.types import Paper

# Paraphrases of single corpus papers (written from rag/data/corpus.jsonl), avoiding the titles' wording.
QUESTIONS = [
    ("How can noisy kNN edges be avoided when graph convolutional networks group face images into identities?",
     "ada-nets-face-clustering-via-adaptive-neighbour"),
    ("Which system learns a compact Euclidean space where distances measure face similarity, trained with triplets?",
     "facenet-a-unified-embedding-for-face-recognition"),
    ("Is there a face detector with fewer than 0.1 million parameters that reuses a shared shallow backbone?",
     "extd-extremely-tiny-face-detector-via-iterative"),
    ("How can convolutions be merged into fully-connected layers at inference time for image recognition?",
     "repmlp-re-parameterizing-convolutions-into-fully"),
    ("What predicts the Big Five personality traits from video with an audiovisual residual network?",
     "deep-impression-audiovisual-deep-residual"),
    ("Which method segments melanoma skin lesions with a Swin transformer U-shaped network?",
     "attention-swin-u-net-cross-contextual-attention"),
    ("How can vision foundation models and large language models be combined to infer friends, spouses or colleagues in photos?",
     "socialgpt-prompting-llms-for-social-relation"),
    ("Which work studies recurring substructures in scene graphs of the Visual Genome dataset?",
     "neural-motifs-scene-graph-parsing-with-global"),
    ("How does a variational autoencoder use a perceptual loss from a pretrained CNN instead of pixel-wise loss?",
     "deep-feature-consistent-variational-autoencoder"),
    ("Which method reconstructs a face image from only the feature vector of a black-box recognition system like ArcFace?",
     "black-box-face-recovery-from-identity-features"),
]


@pytest.fixture(scope="module")
def retriever(built_index):
    settings = Settings(data_dir=built_index)
    return Retriever(settings, PaperStore(settings))


@pytest.mark.parametrize("question, paper_id", QUESTIONS, ids=[pid.split("-")[0] for _, pid in QUESTIONS])
def test_paraphrased_question_finds_its_paper(retriever, question, paper_id):
    r = retriever.retrieve(question, k=5)
    top3 = [c.paper_id for c in r.contexts[:3]]
    assert paper_id in top3, top3


def test_question_ids_exist():
    ids = {p.id for p in load_bundled()}
    assert {pid for _, pid in QUESTIONS} <= ids


def test_contexts_are_numbered_and_passages_sorted(retriever):
    r = retriever.retrieve("face swapping with diffusion models", k=4)
    assert [c.n for c in r.contexts] == [1, 2, 3, 4]
    assert len({c.paper_id for c in r.contexts}) == 4
    papers = retriever.store.all_papers()
    for c in r.contexts:
        assert c.passages, c.paper_id
        idx = [p.index for p in c.passages]
        assert idx == sorted(idx) == list(range(len(idx)))  # every chunk, in reading order
        assert c.title == papers[c.paper_id].title
        assert c.abstract == papers[c.paper_id].abstract
        assert " ".join(p.text for p in c.passages).split()[:3] == c.abstract.split()[:3]
        assert c.dense == pytest.approx(max(p.score for p in c.passages))
        assert -1.0 <= c.dense <= 1.0 and 0 < c.score <= 1.0
    assert r.query_vec.shape == (384,)
    assert set(r.timings_ms) >= {"embed_ms", "dense_ms", "lexical_ms", "fuse_ms", "retrieve_ms"}


@pytest.mark.parametrize("k", [1, 3, 7])
def test_k_is_respected(retriever, k):
    r = retriever.retrieve("facial expression recognition", k=k)
    assert len(r.contexts) == k
    assert [c.n for c in r.contexts] == list(range(1, k + 1))


def test_default_k_comes_from_settings(built_index):
    settings = Settings(data_dir=built_index, k=2)
    r = Retriever(settings, PaperStore(settings)).retrieve("face recognition on edge devices")
    assert len(r.contexts) == 2


def test_paper_ids_filter_restricts_results(retriever):
    allowed = ["edgeface-efficient-face-recognition-model-for", "neural-common-neighbor-with-completion-for-link",
               "conditional-image-generation-with-pixelcnn"]
    # a question whose best match overall is outside the allowed set
    unfiltered = retriever.retrieve(QUESTIONS[0][0], k=3)
    assert not {c.paper_id for c in unfiltered.contexts} & set(allowed)

    r = retriever.retrieve(QUESTIONS[0][0], k=5, paper_ids=allowed)
    got = [c.paper_id for c in r.contexts]
    assert got and set(got) <= set(allowed)
    assert [c.n for c in r.contexts] == list(range(1, len(got) + 1))

    only = retriever.retrieve("link prediction with message passing", k=3, paper_ids=[allowed[1]])
    assert [c.paper_id for c in only.contexts] == [allowed[1]]


def test_restricted_papers_are_ranked_by_bm25_however_far_down_the_corpus(built_index):
    # A follow-up restricted to a few papers must rank them by BM25 among themselves, even
    # when many other papers score higher on the question's words (it used to keep only the
    # allowed papers among the whole corpus's top 2*fetch_k, so these got no lexical rank).
    settings = Settings(data_dir=built_index, fetch_k=5)
    r = Retriever(settings, PaperStore(settings))
    question = "face recognition"
    lex = r.lexical()
    scores = lex.scores(terms(question))
    order = [lex.ids[int(i)] for i in np.argsort(-scores, kind="stable") if scores[i] > 0]
    far = order[2 * settings.fetch_k:][:2]
    assert len(far) == 2, "the question must match more than 2*fetch_k papers"
    got = r.retrieve(question, k=2, paper_ids=far)
    assert {c.paper_id for c in got.contexts} == set(far)
    position = {pid: i for i, pid in enumerate(lex.ids)}
    for c in got.contexts:
        assert c.lexical == pytest.approx(float(scores[position[c.paper_id]]))
        assert c.lexical > 0


def test_lexical_index_scores():
    papers = load_bundled()[:20]
    lex = LexicalIndex.from_documents([p.id for p in papers],
                                      [terms(f"{p.title} {p.title} {p.abstract}") for p in papers], "rev-1")
    assert list(lex.ids) == [p.id for p in papers]
    scores = lex.scores(terms("Ada-NETS face clustering"))
    assert lex.ids[int(scores.argmax())] == "ada-nets-face-clustering-via-adaptive-neighbour"
    assert not lex.scores(terms("zyxwvut qqqq")).any()  # unknown words score nothing
    assert lex.term_idf("zyxwvut") == lex.oov_idf > lex.term_idf("face")
    empty = LexicalIndex.from_documents([], [], "rev-0")
    assert empty.scores(["face"]).shape == (0,)


def test_lexical_index_is_persisted_and_updated_incrementally(tmp_path, monkeypatch):
    import rag.lexicon as lexicon

    papers = load_bundled()[:20]
    lex = lexicon.Lexicon(tmp_path / "lexical")
    lex.upsert((p.id, "h", p.title, p.abstract) for p in papers)
    first = lex.build("rev-1")
    assert isinstance(first.data, np.memmap)  # read from disk, not loaded
    assert list(first.ids) == [p.id for p in papers]

    calls = []
    real_terms = lexicon.terms
    monkeypatch.setattr(lexicon, "terms", lambda text, *a, **k: calls.append(text) or real_terms(text, *a, **k))
    again = lexicon.Lexicon(tmp_path / "lexical").open_build("rev-1")  # another process: opened, nothing tokenized
    assert calls == [] and list(again.ids) == list(first.ids)
    q = terms("Ada-NETS face clustering")
    assert np.array_equal(again.scores(q), first.scores(q))

    extra = load_bundled()[20]
    lex.upsert([(extra.id, "h", extra.title, extra.abstract)])  # one new paper: only it is tokenized
    updated = lex.build("rev-2")
    assert len(calls) == 1 and extra.title in calls[0]
    assert updated.ids[-1] == extra.id and len(updated.ids) == 21
    assert lex.open_build("rev-1") is None  # older builds are removed


def test_lexical_index_rebuilds_when_store_changes(index_copy):
    settings = Settings(data_dir=index_copy)
    store = PaperStore(settings)
    retriever = Retriever(settings, store)
    before = retriever.lexical()
    assert retriever.lexical() is before  # cached while nothing changes
    word = "Quokkaformer"
    assert before.doc_freq(terms(word)[0]) == 0

    extra = Paper(id="quokka-paper", title=f"{word}: Counting Marsupials in Camera Trap Images",
                  abstract=f"We introduce {word}, a transformer that counts quokkas in camera trap images "
                           "from Rottnest Island. It outperforms prior counting methods by a wide margin.")
    report = store.ingest([extra])
    assert report.added == ["quokka-paper"]
    assert store.count() == 120

    after = retriever.lexical()
    assert after is not before
    assert "quokka-paper" in after.ids and len(after.ids) == 120
    r = retriever.retrieve(f"What is {word}?", k=3)
    assert r.contexts[0].paper_id == "quokka-paper"
    assert r.contexts[0].lexical > 0

    # a second store object on the same folder sees the change too (revision lives in the index)
    other = Retriever(settings, PaperStore(settings))
    assert "quokka-paper" in other.lexical().ids

    store.delete_papers(["quokka-paper"])
    assert "quokka-paper" not in retriever.lexical().ids
    assert all(c.paper_id != "quokka-paper" for c in retriever.retrieve(f"What is {word}?", k=3).contexts)
