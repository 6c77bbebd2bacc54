"""What is measured: retrieval and citation metrics, grading one answer, the LLM judge,
summaries over many (definitions in `rag.eval`'s docstring and eval/README.md)."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..support import IdfFn, SupportChecker
from ..types import Answer
from .datasets import Question

# Offline support check for groundedness (documented in eval/README.md).

# The headline metrics, in report order; `LOWER_IS_BETTER` flips the sign of "better".
HEADLINE = [
    "hit_at_k",
    "recall_at_k",
    "mrr",
    "ndcg_at_10",
    "citation_precision",
    "citation_recall",
    "key_fact_recall",
    "key_facts_in_lead",
    "answer_words_p50",
    "consistency",
    "abstention_rate",
    "false_abstention_rate",
    "invalid_citations",
    "invented_specifics",
    "groundedness",
    "latency_p50_ms",
    "latency_p95_ms",
    "ttft_p50_ms",
    "ttft_p95_ms",
]
RETRIEVAL_HEADLINE = ["recall_at_1", "recall_at_5", "recall_at_10", "mrr", "ndcg_at_10",
                      "latency_p50_ms", "latency_p95_ms"]
LOWER_IS_BETTER = {
    "false_abstention_rate",
    "invalid_citations",
    "invented_specifics",
    "fallbacks",
    "latency_p50_ms",
    "latency_p95_ms",
    "answer_words_p50",
    "ttft_p50_ms",
    "ttft_p95_ms",
    "errors",
}
LABELS = {
    "hit_at_k": "hit@k",
    "recall_at_k": "recall@k",
    "mrr": "MRR",
    "ndcg_at_10": "nDCG@10",
    "citation_precision": "citation precision",
    "citation_recall": "citation recall",
    "key_fact_recall": "key-fact recall",
    "key_facts_in_lead": "key facts in first 40 words",
    "answer_words_p50": "median answer words",
    "consistency": "consistency (rephrasings)",
    "abstention_rate": "abstention (unanswerable)",
    "false_abstention_rate": "false abstention",
    "abstention_accuracy": "abstain/answer right",
    "invalid_citations": "invalid citations",
    "invented_specifics": "invented numbers/names shown",
    "fallbacks": "extractive fallbacks",
    "groundedness": "groundedness",
    "latency_p50_ms": "latency p50 ms",
    "latency_p95_ms": "latency p95 ms",
    "ttft_p50_ms": "first token p50 ms",
    "ttft_p95_ms": "first token p95 ms",
    "judge_score": "judge (1-5)",
    "recall_at_1": "recall@1",
    "recall_at_5": "recall@5",
    "recall_at_10": "recall@10",
    "pass_rate": "questions passed",
    "errors": "errors",
    "n": "questions",
}



# --- metrics -------------------------------------------------------------------------

def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def fact_in(fact: str, text: str) -> bool:
    return _norm(fact) in _norm(text)


def key_fact_recall(facts: Sequence[str], text: str) -> float | None:
    if not facts:
        return None
    return sum(fact_in(f, text) for f in facts) / len(facts)


LEAD_WORDS = 40  # what a reader sees first: key facts must land within these words


def lead(text: str, n: int = LEAD_WORDS) -> str:
    return " ".join(text.split()[:n])


def consistency(rows: list[dict[str, Any]]) -> float | None:
    """Over groups of rephrasings of one question: the share of rows that cite the same papers
    (or abstain) as the group's most common outcome."""
    groups: dict[str, list[tuple]] = defaultdict(list)
    for r in rows:
        if not r.get("error"):
            outcome = ("abstained",) if r.get("abstained") else tuple(sorted(r.get("cited", [])))
            groups[r.get("group") or r["id"]].append(outcome)
    shares = [max(g.count(o) for o in set(g)) / len(g) for g in groups.values() if len(g) > 1]
    return sum(shares) / len(shares) if shares else None


def recall_at_k(ranked: Sequence[str], gold: Iterable[str], k: int) -> float:
    gold = set(gold)
    return len(gold & set(ranked[:k])) / len(gold) if gold else 0.0


def hit_at_k(ranked: Sequence[str], gold: Iterable[str], k: int) -> float:
    return 1.0 if set(gold) & set(ranked[:k]) else 0.0


def mrr(ranked: Sequence[str], gold: Iterable[str], k: int | None = None) -> float:
    gold = set(gold)
    for i, pid in enumerate(ranked[:k] if k else ranked):
        if pid in gold:
            return 1.0 / (i + 1)
    return 0.0


def ndcg_at(ranked: Sequence[str], gold: Iterable[str], k: int = 10) -> float:
    """Binary-gain nDCG: each gold paper counts once, at its first rank."""
    gold = set(gold)
    if not gold:
        return 0.0
    seen: set[str] = set()
    dcg = 0.0
    for i, pid in enumerate(ranked[:k]):
        if pid in gold and pid not in seen:
            seen.add(pid)
            dcg += 1.0 / math.log2(i + 2)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(gold), k)))
    return dcg / idcg


def citation_pr(cited: Iterable[str], gold: Iterable[str]) -> tuple[float, float]:
    """(precision, recall) of the cited papers against gold; no citation = (0, 0)."""
    cited, gold = set(cited), set(gold)
    if not cited or not gold:
        return 0.0, 0.0
    return len(cited & gold) / len(cited), len(cited & gold) / len(gold)


# --- grading one answer ----------------------------------------------------------------

def grade(q: Question, a: Answer, k: int, ranking: Sequence[str] | None = None,
          support: SupportChecker | None = None, idf: IdfFn | None = None) -> dict[str, Any]:
    """Metrics of one answer. `ranking` is a deeper ranking for nDCG@10 (default: the
    answer's own contexts); `support` adds groundedness."""
    retrieved = [c.paper_id for c in sorted(a.contexts, key=lambda c: c.rank or c.n)]
    cited = list(dict.fromkeys(c.paper_id for c in a.citations))
    row: dict[str, Any] = {"id": q.id, "type": q.type, "abstained": a.abstained, "cited": cited,
                           "retrieved": retrieved[:k], "invalid_citations": a.invalid_citations,
                           "group": q.group, "style": q.style}
    if support is not None and not a.abstained:
        g = support.check(a, idf=idf)
        row["groundedness"] = g["groundedness"]
        row["sentences"] = g["sentences"]
        row["invented_specifics"] = g["invented"]
    if isinstance(a.meta.get("guard"), dict):
        row["guard"] = a.meta["guard"]
    if a.meta.get("fallback"):
        row["fallback"] = a.meta["fallback"]
    if not q.answerable:
        row["correct_abstention"] = a.abstained
        return row
    ranked = list(ranking) if ranking is not None else retrieved
    row["recall_at_k"] = recall_at_k(retrieved, q.gold, k)
    row["hit_at_k"] = hit_at_k(retrieved, q.gold, k)
    row["mrr"] = mrr(retrieved, q.gold, k)
    row["ndcg_at_10"] = ndcg_at(ranked, q.gold, 10)
    row["false_abstention"] = a.abstained
    if not a.abstained:
        row["citation_precision"], row["citation_recall"] = citation_pr(cited, q.gold)
    row["key_fact_recall"] = key_fact_recall(q.key_facts, "" if a.abstained else a.text)
    row["key_facts_in_lead"] = key_fact_recall(q.key_facts, "" if a.abstained else lead(a.text))
    if not a.abstained:
        row["answer_words"] = len(a.text.split())
    row["missing_facts"] = [f for f in q.key_facts if a.abstained or not fact_in(f, a.text)]
    return row


def problems(row: dict[str, Any]) -> list[str]:
    """What went wrong with one graded question (empty = passed)."""
    out: list[str] = []
    if row.get("error"):
        return [f"error: {row['error']}"]
    if row.get("invalid_citations"):
        out.append(f"{row['invalid_citations']} invalid citation marker(s)")
    if row.get("kind") == "retrieval":
        if row.get("rank") is None:
            out.append(f"gold abstract not in the top {row.get('depth', 10)}")
        elif row["rank"] > 5:
            out.append(f"gold abstract ranked {row['rank']}")
        return out
    gold = set(row.get("gold", []))
    if not gold:
        if not row.get("abstained"):
            out.append("answered an unanswerable question")
    else:
        if row.get("abstained"):
            out.append("abstained on an answerable question")
        missed = [g for g in row.get("gold", []) if g not in set(row.get("retrieved", []))]
        if missed:
            out.append(("no gold paper retrieved" if len(missed) == len(gold) else "gold not retrieved")
                       + ": " + ", ".join(missed))
        if not row.get("abstained"):
            wrong = [c for c in row.get("cited", []) if c not in gold]
            uncited = [g for g in row.get("gold", []) if g not in set(row.get("cited", []))]
            if wrong:
                out.append("cited non-gold: " + ", ".join(wrong))
            if uncited:
                out.append("gold not cited: " + ", ".join(uncited))
        if row.get("missing_facts") and not row.get("abstained"):
            out.append("missing key facts: " + "; ".join(repr(f) for f in row["missing_facts"]))
    if row.get("groundedness") is not None and row["groundedness"] < 1.0:
        bad = sum(1 for s in row.get("sentences", []) if not s["supported"])
        out.append(f"{bad} sentence(s) without a supporting citation")
    if row.get("judge_score") is not None and row["judge_score"] <= 2:
        out.append(f"judge score {row['judge_score']}")
    return out


# --- LLM judge -------------------------------------------------------------------------------

_SCORE_RE = re.compile(r"score\s*(?:\(1-5\))?\s*[:=]?\s*\**\s*([1-5])\b", re.I)


def parse_judge_score(reply: str) -> int | None:
    """The 1-5 score in a judge reply ('Score: 4'; else a reply that is just a digit)."""
    found = _SCORE_RE.findall(reply or "")
    if found:
        return int(found[-1])
    m = re.fullmatch(r"\W*([1-5])(?:\s*/\s*5)?\W*", (reply or "").strip())
    return int(m.group(1)) if m else None


def judge_answer(llm, question: str, reference: str, answer: str) -> tuple[int | None, str]:
    """Ask the LLM to score the answer against the reference (prompts/judge.md)."""
    from ..prompting import render

    prompt = render("judge", question=question, reference=reference, answer=answer)
    reply = llm.invoke(prompt)
    text = reply if isinstance(reply, str) else getattr(reply, "content", str(reply))
    if isinstance(text, list):  # content blocks
        text = " ".join(b.get("text", "") if isinstance(b, dict) else str(b) for b in text)
    return parse_judge_score(text), text


# --- summaries ------------------------------------------------------------------------------

def _mean(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _pct(values: Iterable[Any], q: float) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.percentile(vals, q)) if vals else None


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline metrics of a group of graded QA rows."""
    ok = [r for r in rows if not r.get("error")]
    ans = [r for r in ok if r.get("gold")]
    unans = [r for r in ok if not r.get("gold")]
    s: dict[str, Any] = {
        "n": len(rows), "answerable": len(ans), "unanswerable": len(unans),
        "errors": len(rows) - len(ok),
        "hit_at_k": _mean(r.get("hit_at_k") for r in ans),
        "recall_at_k": _mean(r.get("recall_at_k") for r in ans),
        "mrr": _mean(r.get("mrr") for r in ans),
        "ndcg_at_10": _mean(r.get("ndcg_at_10") for r in ans),
        "citation_precision": _mean(r.get("citation_precision") for r in ans),
        "citation_recall": _mean(r.get("citation_recall") for r in ans),
        "key_fact_recall": _mean(r.get("key_fact_recall") for r in ans),
        "key_facts_in_lead": _mean(r.get("key_facts_in_lead") for r in ans),
        "answer_words_p50": _pct((r.get("answer_words") for r in ans), 50),
        "consistency": consistency(ok),
        "abstention_rate": _mean(r["abstained"] for r in unans) if unans else None,
        "false_abstention_rate": _mean(r["abstained"] for r in ans) if ans else None,
        "abstention_accuracy": _mean(bool(r["abstained"]) != bool(r.get("gold")) for r in ok) if ok else None,
        "invalid_citations": sum(int(r.get("invalid_citations") or 0) for r in ok),
        "invented_specifics": sum(int(r.get("invented_specifics") or 0) for r in ok),
        "groundedness": _mean(r.get("groundedness") for r in ok),
        "latency_p50_ms": _pct((r.get("total_ms") for r in ok), 50),
        "latency_p95_ms": _pct((r.get("total_ms") for r in ok), 95),
        "ttft_p50_ms": _pct((r.get("first_token_ms") for r in ok), 50),
        "ttft_p95_ms": _pct((r.get("first_token_ms") for r in ok), 95),
        "pass_rate": _mean(bool(r.get("passed")) for r in rows) if rows else None,
    }
    guarded = [r["guard"] for r in ok if isinstance(r.get("guard"), dict)]
    if guarded:  # a generative mode: what its guard did, summed over answers
        s["fallbacks"] = sum(1 for r in ok if r.get("fallback"))
        s["guard"] = {k: sum(int(g.get(k, 0)) for g in guarded)
                      for k in ("kept", "dropped", "flagged", "attributed", "recited", "invented")}
    judged = [r.get("judge_score") for r in ok if r.get("judge_score") is not None]
    if judged or any("judge_score" in r for r in rows):
        s["judge_score"] = _mean(judged)
        s["judged"] = len(judged)
    return {k: (_r(v, 1) if k.endswith("_ms") else _r(v)) if isinstance(v, float) else v for k, v in s.items()}


def summarise_retrieval(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if not r.get("error")]
    s = {"n": len(rows), "errors": len(rows) - len(ok),
         "recall_at_1": _mean(r["recall_at_1"] for r in ok), "recall_at_5": _mean(r["recall_at_5"] for r in ok),
         "recall_at_10": _mean(r["recall_at_10"] for r in ok), "mrr": _mean(r["mrr"] for r in ok),
         "ndcg_at_10": _mean(r["ndcg_at_10"] for r in ok),
         "latency_p50_ms": _pct((r.get("total_ms") for r in ok), 50),
         "latency_p95_ms": _pct((r.get("total_ms") for r in ok), 95),
         "pass_rate": _mean(bool(r.get("passed")) for r in rows) if rows else None}
    return {k: (_r(v, 1) if k.endswith("_ms") else _r(v)) if isinstance(v, float) else v for k, v in s.items()}


def _by_type(rows: list[dict[str, Any]], fn, key: str = "type") -> dict[str, Any]:
    groups: dict[str, list] = defaultdict(list)
    for r in rows:
        groups[str(r.get(key))].append(r)
    return {t: fn(g) for t, g in sorted(groups.items())}
