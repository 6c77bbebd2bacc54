"""`rag fit`: the extractive planner's weights and thresholds, fitted by cross-validation.

The tuning pool is `eval/questions.jsonl` plus its rephrasings in `eval/rephrased.jsonl`
(the held-out sets stay out). Folds are grouped by source question, so a question and its
rephrasings never sit on both sides. Per fold: the answer-type model is trained on the
labelled examples plus the training questions, the paper model (a logistic regression
over `PAPER_FEATURES`) on the training questions' retrieved papers, and the thresholds by
coordinate search over a grid against `objective()`; the test fold is then answered by
`planning.select()`, the same function the assistant runs. The final fit uses the whole
pool and is written to `rag/data/answer_config.json` and `rag/data/type_model.npz`, with
the cross-validated figures inside the config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .analysis import TypeModel, load_examples
from .planning import Candidate, probability, select, sentence_probability
from .tuning import PAPER_FEATURES, SENTENCE_FEATURES, AnswerConfig

# Eval question types -> answer types.
TYPE_OF = {"which_paper": "paper", "numeric": "number", "multi_paper": "list", "comparison": "comparison",
           "single_fact": "description"}
GRID: dict[str, list[float]] = {
    "min_similarity": [0.1, 0.15, 0.2, 0.25, 0.3],
    "abstain_below": [round(0.05 * i, 2) for i in range(1, 15)],
    "list_min": [round(0.1 * i, 1) for i in range(1, 10)],
    "list_ratio": [round(0.1 * i, 1) for i in range(1, 10)],
    "quantity_similarity": [round(0.4 + 0.05 * i, 2) for i in range(10)],
}
MAX_FALSE_ABSTENTION = 0.02
BUDGET_GRID: dict[str, list[float]] = {
    "extra_sentence_min": [0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7],
    # A list or comparison stays one line per paper: at most a couple of sentences each.
    "word_budget.one": list(range(20, 110, 5)),
    "word_budget.list": list(range(15, 55, 5)),
    "word_budget.comparison": list(range(15, 75, 5)),
}
MAX_MEDIAN_WORDS = 55


@dataclass
class Case:
    """One tuning question with its retrieved papers, scored once."""

    id: str
    source: str
    question: str
    kind: str  # eval type
    gold: frozenset[str]
    key_facts: tuple[str, ...]
    analysis: Any  # QuestionAnalysis (its answer type is replaced per fold)
    candidates: list[Candidate]


def collect(assistant, questions: Sequence[Any], progress: bool = True) -> list[Case]:
    """Retrieve and score every question once (the expensive part)."""
    from tqdm import tqdm

    ex = assistant.extractive
    cases = []
    for q in tqdm(questions, desc="Scoring", disable=not progress, unit="q"):
        r = assistant.retrieve(q.question)
        assistant.refresh_names(r.revision)
        qa = ex.analyzer.analyse(q.question)
        cands = ex.planner.candidates(qa, r.contexts, r.idf, r.query_vec, quantities=True)
        cases.append(Case(q.id, q.id.split("-")[0], q.question, q.type, frozenset(q.gold), tuple(q.key_facts),
                          qa, cands))
    return cases


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 3000) -> tuple[np.ndarray, float]:
    """Binary logistic regression on raw features (Adam), so the weights apply as they are."""
    n, d = x.shape
    w, b = np.zeros(d), 0.0
    mw, vw, mb, vb = np.zeros(d), np.zeros(d), 0.0, 0.0
    for t in range(1, steps + 1):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w + b, -30, 30)))
        gw = x.T @ (p - y) / n + l2 * w
        gb = float((p - y).mean())
        mw, vw = 0.9 * mw + 0.1 * gw, 0.999 * vw + 0.001 * gw ** 2
        mb, vb = 0.9 * mb + 0.1 * gb, 0.999 * vb + 0.001 * gb ** 2
        w -= 0.02 * (mw / (1 - 0.9 ** t)) / (np.sqrt(vw / (1 - 0.999 ** t)) + 1e-8)
        b -= 0.02 * (mb / (1 - 0.9 ** t)) / (math.sqrt(vb / (1 - 0.999 ** t)) + 1e-8)
    return w, b


def fit_paper_model(cases: Sequence[Case], config: AnswerConfig) -> AnswerConfig:
    x = np.array([[c.features[k] for k in PAPER_FEATURES] for case in cases for c in case.candidates])
    y = np.array([float(c.context.paper_id in case.gold) for case in cases for c in case.candidates])
    w, b = fit_logistic(x, y)
    return config.model_copy(update={"paper_weights": {k: round(float(v), 4) for k, v in zip(PAPER_FEATURES, w)},
                                     "paper_bias": round(float(b), 4)})


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def sentence_rows(cases: Sequence[Case]) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Sentences of the gold papers, labelled by whether they hold a key fact; with the
    (start, end) row span of each paper, for top-1 accuracy."""
    x: list[list[float]] = []
    y: list[float] = []
    spans: list[tuple[int, int]] = []
    for case in cases:
        facts = [_norm(f) for f in case.key_facts]
        for c in case.candidates:
            if c.context.paper_id not in case.gold or not facts:
                continue
            labels = [any(f in _norm(s.text) for f in facts) for s in c.sentences]
            if not any(labels):
                continue
            start = len(x)
            for s, hit in zip(c.sentences, labels):
                x.append([s.features[k] for k in SENTENCE_FEATURES])
                y.append(float(hit))
            spans.append((start, len(x)))
    return np.array(x), np.array(y), spans


def fit_listwise(x: np.ndarray, y: np.ndarray, spans: Sequence[tuple[int, int]], l2: float = 1e-2,
                 steps: int = 1500) -> np.ndarray:
    """Weights that put a labelled row first within each span (softmax over the span,
    ListNet-style): the sentence model ranks one paper's sentences against each other."""
    d = x.shape[1]
    w, m, v = np.zeros(d), np.zeros(d), np.zeros(d)
    for t in range(1, steps + 1):
        z = x @ w
        g = np.zeros(d)
        for a, b in spans:
            p = np.exp(z[a:b] - z[a:b].max())
            p /= p.sum()
            q = p * (y[a:b] > 0)
            g += x[a:b].T @ (p - q / q.sum())
        g = g / max(len(spans), 1) + l2 * w
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        w -= 0.02 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    return w


def fit_sentence_model(cases: Sequence[Case], config: AnswerConfig) -> AnswerConfig:
    """Ranking weights from the gold papers' sentences, then a bias that makes the scores
    calibrated probabilities of holding a key fact (one-feature logistic on the score)."""
    x, y, spans = sentence_rows(cases)
    w = fit_listwise(x, y, spans)
    scale, bias = fit_logistic((x @ w)[:, None], y)
    weights = {k: round(float(v * scale[0]), 4) for k, v in zip(SENTENCE_FEATURES, w)}
    return config.model_copy(update={"sentence_weights": weights, "sentence_bias": round(float(bias), 4)})


def sentence_top(cases: Sequence[Case], config: AnswerConfig, k: int = 1) -> float:
    """Share of gold papers among whose k most probable sentences one holds a key fact."""
    x, y, spans = sentence_rows(cases)
    z = x @ np.array([config.sentence_weights.get(f, 0.0) for f in SENTENCE_FEATURES])
    return float(np.mean([y[a + np.argsort(-z[a:b])[:k]].max() for a, b in spans])) if spans else 0.0


def fit_answer_model(cases: Sequence[Case], config: AnswerConfig) -> AnswerConfig:
    """P(the corpus answers) from the features of the paper an answer would lead with."""
    from .planning import best

    tops = []
    for case in cases:
        for c in case.candidates:
            c.probability = probability(c.features, config)
        tops.append(best(case.candidates)[0].features)
    x = np.array([[f[k] for k in PAPER_FEATURES] for f in tops])
    y = np.array([float(bool(case.gold)) for case in cases])
    w, b = fit_logistic(x, y)
    return config.model_copy(update={"answer_weights": {k: round(float(v), 4) for k, v in zip(PAPER_FEATURES, w)},
                                     "answer_bias": round(float(b), 4)})


def _with_type(case: Case, kind: str) -> Any:
    return replace(case.analysis, answer_type=kind)


def replay(case: Case, config: AnswerConfig, kind: str) -> tuple[bool, set[str]]:
    """(abstained, cited paper ids) as the assistant would decide with this config."""
    for c in case.candidates:
        c.probability = probability(c.features, config)
    chosen, abstain = select(_with_type(case, kind), case.candidates, config)
    return abstain is not None, {c.context.paper_id for c in chosen}


def metrics(cases: Sequence[Case], config: AnswerConfig, kinds: dict[str, str]) -> dict[str, float]:
    prec, rec, fa, ab = [], [], [], []
    for case in cases:
        abstained, cited = replay(case, config, kinds[case.id])
        if case.gold:
            fa.append(abstained)
            if not abstained:
                hit = len(cited & case.gold)
                prec.append(hit / len(cited))
                rec.append(hit / len(case.gold))
            else:
                rec.append(0.0)
        else:
            ab.append(abstained)

    def mean(v: list) -> float:
        return float(np.mean(v)) if v else 0.0

    return {"citation_precision": mean(prec), "citation_recall": mean(rec), "false_abstention_rate": mean(fa),
            "abstention_rate": mean(ab), "n": len(cases)}


def answer_text(case: Case, config: AnswerConfig, kind: str) -> str | None:
    """The extractive answer the assistant would write (None when it abstains)."""
    from .composition import compose
    from .planning import AnswerPlan, evidence_for

    qa = _with_type(case, kind)
    for c in case.candidates:
        c.probability = probability(c.features, config)
        for s in c.sentences:
            s.probability = sentence_probability(s.features, config)
    chosen, abstain = select(qa, case.candidates, config)
    if abstain:
        return None
    return compose(AnswerPlan(qa, evidence_for(qa, chosen, config))).text


def answer_metrics(cases: Sequence[Case], config: AnswerConfig, kinds: dict[str, str]) -> dict[str, float]:
    """Key facts anywhere / in the first 40 words, and answer length, over answerable cases."""
    kf, kf40, lengths = [], [], []
    for case in cases:
        if not case.gold or not case.key_facts:
            continue
        text = answer_text(case, config, kinds[case.id]) or ""
        norm, first = _norm(text), _norm(" ".join(text.split()[:40]))
        kf.append(np.mean([_norm(f) in norm for f in case.key_facts]))
        kf40.append(np.mean([_norm(f) in first for f in case.key_facts]))
        if text:
            lengths.append(len(text.split()))
    return {"key_fact_recall": float(np.mean(kf)), "key_facts_in_40_words": float(np.mean(kf40)),
            "median_words": float(np.median(lengths)) if lengths else 0.0}


def _with(config: AnswerConfig, name: str, value: float) -> AnswerConfig:
    """A copy with one setting changed; 'word_budget.list' names one entry of a dict setting."""
    field, _, key = name.partition(".")
    if key:
        return config.model_copy(update={field: {**getattr(config, field), key: value}})
    return config.model_copy(update={name: value})


def fit_budget(cases: Sequence[Case], config: AnswerConfig, kinds: dict[str, str]) -> AnswerConfig:
    """How many sentences an answer quotes: the most key facts (anywhere and in the first 40
    words) with the median answer within MAX_MEDIAN_WORDS."""
    def score(c: AnswerConfig) -> float:
        m = answer_metrics(cases, c, kinds)
        return m["key_fact_recall"] + m["key_facts_in_40_words"] - max(0.0, m["median_words"] - MAX_MEDIAN_WORDS)

    best = score(config)
    for _ in range(2):
        for name, values in BUDGET_GRID.items():
            for v in values:
                trial = _with(config, name, v)
                s = score(trial)
                if s > best + 1e-9:
                    best, config = s, trial
    return config


def objective(m: dict[str, float]) -> float:
    """Precision and recall of the cited papers, abstention on unanswerable questions, and a
    steep price for false abstentions above MAX_FALSE_ABSTENTION."""
    over = max(0.0, m["false_abstention_rate"] - MAX_FALSE_ABSTENTION)
    return (m["citation_precision"] + m["citation_recall"]) / 2 + 0.5 * m["abstention_rate"] - 10 * over


def fit_thresholds(cases: Sequence[Case], config: AnswerConfig, kinds: dict[str, str], rounds: int = 3) -> AnswerConfig:
    """Coordinate search over GRID, each threshold in turn, a few rounds."""
    best = objective(metrics(cases, config, kinds))
    for _ in range(rounds):
        improved = False
        for name, values in GRID.items():
            for v in values:
                trial = config.model_copy(update={name: v})
                score = objective(metrics(cases, trial, kinds))
                if score > best + 1e-9:
                    best, config, improved = score, trial, True
        if not improved:
            break
    return config


def fit_types(cases: Sequence[Case]) -> TypeModel:
    rows = load_examples()
    questions = [q for q, _ in rows] + [c.question for c in cases if c.kind in TYPE_OF]
    labels = [t for _, t in rows] + [TYPE_OF[c.kind] for c in cases if c.kind in TYPE_OF]
    return TypeModel.fit(questions, labels)


def fit_fold(train: Sequence[Case], base: AnswerConfig) -> tuple[AnswerConfig, TypeModel]:
    types = fit_types(train)
    kinds = dict(zip([c.id for c in train], types.predict([c.question for c in train])))
    config = fit_answer_model(train, fit_paper_model(train, fit_sentence_model(train, base)))
    config = fit_thresholds(train, config, kinds)
    return fit_budget(train, config, kinds), types


def cross_validate(cases: Sequence[Case], base: AnswerConfig, folds: int = 5,
                   progress: bool = True) -> dict[str, float]:
    sources = sorted({c.source for c in cases})
    totals: dict[str, list[float]] = {}
    type_hits: list[bool] = []
    for i in range(folds):
        held = set(sources[i::folds])
        train = [c for c in cases if c.source not in held]
        test = [c for c in cases if c.source in held]
        config, types = fit_fold(train, base)
        kinds = dict(zip([c.id for c in test], types.predict([c.question for c in test])))
        type_hits += [kinds[c.id] == TYPE_OF[c.kind] for c in test if c.kind in TYPE_OF]
        totals.setdefault("sentence_top1", []).append(sentence_top(test, config, 1) * len(test))
        totals.setdefault("sentence_top2", []).append(sentence_top(test, config, 2) * len(test))
        for k, v in {**metrics(test, config, kinds), **answer_metrics(test, config, kinds)}.items():
            totals.setdefault(k, []).append(v * len(test))
        if progress:
            print(f"fold {i + 1}/{folds}: {metrics(test, config, kinds)}", flush=True)
    n = len(cases)
    out = {k: round(sum(v) / n, 4) for k, v in totals.items() if k != "n"}
    out["type_accuracy"] = round(float(np.mean(type_hits)), 4)
    return out


def tuning_pool(root: Path) -> list[Any]:
    from .eval import load_questions

    originals = load_questions(root / "eval" / "questions.jsonl")
    ids = {q.id for q in originals}
    rephrased = [q for q in load_questions(root / "eval" / "rephrased.jsonl") if q.id.split("-")[0] in ids]
    return originals + rephrased


def fit(assistant, root: Path, out_dir: Path, folds: int = 5, progress: bool = True) -> AnswerConfig:
    """Cross-validate, fit on the whole pool, write the config and the type model."""
    cases = collect(assistant, tuning_pool(root), progress=progress)
    base = AnswerConfig()
    cv = cross_validate(cases, base, folds, progress)
    config, types = fit_fold(cases, base)
    config = config.model_copy(update={"cv": cv})
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save(out_dir / "answer_config.json")
    types.save(out_dir / "type_model.npz")
    return config
