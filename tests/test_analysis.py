"""Question analysis: named things by their shape (and the corpus's spelling), the answer-type
model, and when a text names something."""

from __future__ import annotations

import numpy as np
import pytest

from rag.analysis import ANSWER_TYPES, TypeModel, corpus_names, mentions, model_path, named_things


@pytest.mark.parametrize("question,names", [
    ("What accuracy does EdgeFace achieve on AgeDB-30?", ["EdgeFace", "AgeDB-30"]),
    ("accuracy of the CNN-based FER system with 0.1M params", ["CNN", "FER", "0.1M"]),
    ("How many GCNs and LLMs does it use in 3D?", ["GCN", "LLM"]),  # plurals singular, '3D' generic
    ("Which paper is a tiny face detector?", []),
])
def test_named_things_by_shape(question, names):
    assert named_things(question) == names


def test_lower_case_questions_find_the_corpus_spelling():
    known = corpus_names(["Results on LFW and YouTube Faces DB.", "We align faces; the face model is LFW-free."])
    assert known.get("lfw") == "LFW"
    assert "face" not in known and "faces" not in known  # the corpus also writes them as words
    assert named_things("whats facenet accuracy on lfw", known.get) == ["LFW"]


@pytest.mark.parametrize("name,text,want", [
    ("AP", "reaches 52.7 average precision on COCO", True),
    ("AP", "a proposed method that helps", False),  # initials of stopwords do not spell it
    ("CrowdPose", "achieves 77.4% AP on CrowPose dataset", True),  # one typo in a long name
    ("AgeDB-30", "results on AgeDB 30 and LFW", True),
    ("mAP", "achieves mAPs of 85.2%", True),
    ("0.1M", "less than 0.1 million parameters", True),
    ("CNN-Transformer", "combining both CNN and Transformer models", True),
    ("AgeDB-30", "results on LFW, IJB-B and IJB-C", False),
    ("MemFace", "talking face generation with memories", False),
])
def test_mentions(name, text, want):
    assert mentions(name, text) is want


@pytest.fixture(scope="module")
def types():
    return TypeModel.load()


@pytest.mark.parametrize("question,kind", [
    ("What accuracy does FaceNet reach on LFW?", "number"),
    ("LPFF pics count", "number"),
    ("how many images are in LS3D-W", "number"),
    ("Which papers perform face swapping with diffusion models?", "list"),
    ("list the works on talking heads", "list"),
    ("How do MemFace and Hallo differ in what drives the video?", "comparison"),
    ("MemFace vs Hallo memory", "comparison"),
    ("Which paper clusters faces by building clean graphs for GCNs?", "paper"),
])
def test_the_type_model_reads_wording_it_was_not_shown(types, question, kind):
    probs = types.probabilities(question)
    assert set(probs) == set(ANSWER_TYPES) and abs(sum(probs.values()) - 1) < 1e-5
    assert max(probs, key=probs.get) == kind, probs


def test_the_shipped_type_model_is_what_rag_fit_trains():
    """rag/data/type_model.npz = TypeModel.fit(labelled examples + the tuning pool's questions)."""
    from pathlib import Path

    from rag.fitting import TYPE_OF, Case, fit_types, tuning_pool

    pool = tuning_pool(Path(__file__).resolve().parents[1])
    cases = [Case(q.id, q.id.split("-")[0], q.question, q.type, frozenset(q.gold), (), None, [])
             for q in pool if q.type in TYPE_OF]
    fresh, shipped = fit_types(cases), TypeModel.load(model_path())
    assert np.allclose(fresh.w, shipped.w, atol=1e-4) and np.allclose(fresh.b, shipped.b, atol=1e-4)
