"""Follow-ups without an LLM: which questions lean on the previous turn, and how they are read."""

from __future__ import annotations

import pytest

from rag.conversation import Turn, followup, is_elliptical, replace_part

FACENET = Turn(question="What accuracy does FaceNet reach on LFW?", asked="What accuracy does FaceNet reach on LFW?",
               cited_ids=["facenet"], cited_titles=["FaceNet: A Unified Embedding for Face Recognition"])


@pytest.mark.parametrize("q", [
    "Which of these papers perform face swapping with diffusion models?",
    "Do any of the papers estimate 3D face shape from a single image?",
    "Among these papers, which one reconstructs groups of people with hypergraphs?",
])
def test_a_full_question_that_says_these_papers_is_not_a_followup(q):
    assert not is_elliptical(q)
    plan = followup(q, FACENET)
    assert plan.question == q and plan.paper_ids is None and not plan.followup


@pytest.mark.parametrize("fragment,want", [
    ("and on YouTube Faces?", "What accuracy does FaceNet reach on YouTube Faces?"),
    ("what about YouTube Faces DB?", "What accuracy does FaceNet reach on YouTube Faces DB?"),
    ("And on IJB-C?", "What accuracy does FaceNet reach on IJB-C?"),
])
def test_an_elliptical_followup_replaces_the_asked_about_part(fragment, want):
    plan = followup(fragment, FACENET)
    assert plan.question == want
    assert plan.followup and plan.typed == fragment.strip()
    assert plan.paper_ids is None  # a standalone question again: every paper may answer it


def test_replace_part_leaves_what_it_cannot_place():
    assert replace_part("Which paper clusters faces?", "on LFW") is None
    assert replace_part("How does Hallo animate portraits?", "and the datasets") is None
    assert replace_part("Which paper reports 77.4% AP on CrowdPose?", "on OCHuman") == \
        "Which paper reports 77.4% AP on OCHuman?"


def test_a_pronoun_followup_still_stays_on_the_cited_paper():
    plan = followup("and what datasets did it use?", FACENET)
    assert plan.paper_ids == ["facenet"] and plan.question == "what datasets did FaceNet use?"
    assert plan.typed == "and what datasets did it use?"


def test_replaced_followup_is_answered_from_the_corpus(assistant):
    first = assistant.ask(FACENET.question)
    prev = Turn(question=first.question, asked=first.question, cited_ids=[c.paper_id for c in first.citations],
                cited_titles=[c.title for c in first.citations])
    plan = followup("and on YouTube Faces DB?", prev)
    answer = assistant.ask(plan.question, paper_ids=plan.paper_ids)
    assert not answer.abstained and "95.12%" in answer.text
    assert answer.citations[0].paper_id == prev.cited_ids[0]
