"""Grading answers against a question set (see eval/README.md)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .types import Answer


@dataclass
class Question:
    id: str
    question: str
    type: str
    gold: list[str]
    key_facts: list[str] = field(default_factory=list)
    answer: str = ""

    @property
    def answerable(self) -> bool:
        return bool(self.gold)


def load_questions(path: str | Path) -> list[Question]:
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            d = json.loads(line)
            out.append(Question(d["id"], d["question"], d["type"], list(d.get("gold", [])),
                                list(d.get("key_facts", [])), d.get("answer", "")))
    return out


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def fact_in(fact: str, text: str) -> bool:
    return _norm(fact) in _norm(text)


def grade(q: Question, a: Answer, k: int) -> dict[str, Any]:
    retrieved = [c.paper_id for c in a.contexts]
    cited = list(dict.fromkeys(c.paper_id for c in a.citations))
    gold = set(q.gold)
    row: dict[str, Any] = {"id": q.id, "type": q.type, "abstained": a.abstained,
                           "cited": cited, "retrieved": retrieved[:k], "invalid_citations": a.invalid_citations}
    if not q.answerable:
        row["correct_abstention"] = a.abstained
        return row
    hits = [i for i, pid in enumerate(retrieved[:k]) if pid in gold]
    row["recall_at_k"] = len({retrieved[i] for i in hits}) / len(gold)
    row["hit_at_k"] = 1.0 if hits else 0.0
    row["mrr"] = 1.0 / (hits[0] + 1) if hits else 0.0
    dcg = sum(1.0 / math.log2(i + 2) for i, pid in enumerate(retrieved[:10]) if pid in gold)
    idcg = sum(1.0 / math.log2(i + 2) for i in range(min(len(gold), 10)))
    row["ndcg_at_10"] = dcg / idcg
    row["false_abstention"] = a.abstained
    if not a.abstained:
        row["citation_precision"] = len(gold & set(cited)) / len(cited) if cited else 0.0
        row["citation_recall"] = len(gold & set(cited)) / len(gold)
    facts = [fact_in(f, a.text) for f in q.key_facts]
    row["key_fact_recall"] = sum(facts) / len(facts) if facts else None
    return row
