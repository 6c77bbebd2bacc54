"""The extractive planner: the pure decision (`select`), the numeric check, the word budget,
and the composition of the answer from a plan."""

from __future__ import annotations

import pytest

from rag.analysis import QuestionAnalysis
from rag.composition import compose, trim
from rag.planning import AnswerPlan, Candidate, Sentence, evidence_for, select
from rag.tuning import PAPER_FEATURES, AnswerConfig
from rag.types import Context

CONFIG = AnswerConfig(min_similarity=0.2, abstain_below=0.5, list_min=0.5, list_ratio=0.6,
                      answer_weights={"sent_cos": 10.0}, answer_bias=-5.0, quantity_similarity=0.6,
                      extra_sentence_min=0.3,
                      word_budget={"one": 40, "list": 20, "comparison": 20})


def qa(kind: str, names: tuple[str, ...] = (), question: str = "q") -> QuestionAnalysis:
    return QuestionAnalysis(question=question, answer_type=kind, type_probs={kind: 1.0}, terms=(), names=names)


def cand(n: int, p: float, cos: float = 0.7, mentioned=(), named: bool = False, title: str | None = None,
         sentences: list[Sentence] | None = None) -> Candidate:
    ctx = Context(n=n, paper_id=f"p{n}", title=title or f"Paper {n}", abstract="...", score=1.0 / n)
    f = {k: 0.0 for k in PAPER_FEATURES}
    f.update(sent_cos=cos, named=float(named))
    sents = sentences or [Sentence(n, 0, f"Sentence of paper {n}.", cos, probability=0.9)]
    return Candidate(ctx, sents, f, frozenset(mentioned), probability=p)


def test_abstains_when_nothing_is_close_enough():
    chosen, why = select(qa("paper"), [cand(1, 0.9, cos=0.1)], CONFIG)
    assert chosen == [] and why.startswith("best similarity")


def test_abstains_on_weak_evidence_unless_the_paper_is_named():
    weak = [cand(1, 0.9, cos=0.45)]  # answerable(0.45) = sigmoid(-0.5) < 0.5
    assert select(qa("paper"), weak, CONFIG)[1].startswith("weak evidence")
    named = [cand(1, 0.9, cos=0.45, named=True)]
    assert select(qa("paper"), named, CONFIG)[1] is None


def test_a_name_the_evidence_never_mentions_is_not_answered():
    c = [cand(1, 0.9, mentioned={"EdgeFace"})]
    chosen, why = select(qa("number", ("EdgeFace", "AgeDB-30")), c, CONFIG)
    assert chosen == [] and why == "evidence never mentions AgeDB-30"


def test_a_number_needs_a_sentence_about_the_asked_quantity():
    s = [Sentence(1, 0, "It has 12 layers.", 0.7, quantity=0.3)]
    assert select(qa("number"), [cand(1, 0.9, sentences=s)], CONFIG)[1].startswith("a number was asked")
    s = [Sentence(1, 0, "It reaches 99.63% accuracy.", 0.7, quantity=1.0)]
    assert select(qa("number"), [cand(1, 0.9, sentences=s)], CONFIG)[1] is None


def test_a_list_takes_the_papers_close_to_the_best_one():
    cands = [cand(1, 0.95), cand(2, 0.8), cand(3, 0.55), cand(4, 0.3)]
    chosen, _ = select(qa("list"), cands, CONFIG)
    assert [c.context.n for c in chosen] == [1, 2]  # 3 is below 0.6 * 0.95, 4 below list_min
    assert [c.context.n for c in select(qa("paper"), cands, CONFIG)[0]] == [1]


def test_a_comparison_takes_one_paper_per_name():
    cands = [cand(1, 0.9, mentioned={"MemFace"}), cand(2, 0.85, mentioned={"MemFace"}),
             cand(3, 0.6, mentioned={"Hallo"})]
    chosen, why = select(qa("comparison", ("MemFace", "Hallo")), cands, CONFIG)
    assert why is None and {c.context.n for c in chosen} == {1, 3}


def test_the_word_budget_and_the_numeric_lead():
    long = "word " * 30
    sents = [Sentence(1, 0, f"Best {long}.", 0.8, probability=0.9),
             Sentence(1, 1, "Short second one.", 0.7, probability=0.8),
             Sentence(1, 2, f"Third {long}.", 0.6, probability=0.7),
             Sentence(1, 3, "It reaches 91% AP.", 0.5, quantity=1.0, probability=0.2)]
    [ev] = evidence_for(qa("paper"), [cand(1, 0.9, sentences=sents)], CONFIG)
    assert [s.index for s in ev.sentences] == [0, 1]  # the third would pass 40 words
    [ev] = evidence_for(qa("number"), [cand(1, 0.9, sentences=sents)], CONFIG)
    assert ev.sentences[0].index == 3  # the number leads


def test_compose_answers_first_and_cites_each_clause_once():
    s1 = Sentence(1, 0, "In this paper, we propose FooNet, a detector that runs at 120 FPS.", 0.8)
    s2 = Sentence(2, 0, "BarNet detects faces in the dark, which is useful.", 0.7)
    p1 = cand(1, 0.9, title="FooNet: Fast Faces", sentences=[s1])
    p2 = cand(2, 0.8, title="Detecting Faces at Night", sentences=[s2])
    plan = AnswerPlan(qa("list", question="which detectors are fast"), evidence_for(qa("list"), [p1, p2], CONFIG))
    out = compose(plan)
    assert out.lines[0] == "Two papers:"
    assert out.lines[1] == "- **FooNet** [1]: \u201cWe propose FooNet, a detector that runs at 120 FPS.\u201d"
    assert out.lines[2] == "- **Detecting Faces at Night** [2]: \u201cBarNet detects faces in the dark.\u201d"
    assert [e.sentence for e in out.evidence] == [s1.text, s2.text]  # the full sentences, apart
    one = compose(AnswerPlan(qa("paper"), evidence_for(qa("paper"), [p1], CONFIG)))
    assert one.text.startswith("**FooNet: Fast Faces** [1]: \u201c")


@pytest.mark.parametrize("text,keep,want", [
    ("Although prior work is slow, we run at 120 FPS on phones.", set(), "We run at 120 FPS on phones."),
    ("Although prior detectors miss faces, we run at 120 FPS.", {"detector"}, "Although prior detectors miss faces, we run at 120 FPS."),
    ("Our method wins, which shows that attention helps a lot here.", set(), "Our method wins, which shows that attention helps a lot here."),
    ("Our detector reaches top accuracy on all benchmarks, which makes it useful in practice.", set(),
     "Our detector reaches top accuracy on all benchmarks."),
    ("We reach 91% AP, outperforming the 88% of the baseline.", set(), "We reach 91% AP, outperforming the 88% of the baseline."),
])
def test_trim_only_cuts_what_holds_nothing_asked(text, keep, want):
    assert trim(Sentence(1, 0, text, 0.5), keep, ()) == want
