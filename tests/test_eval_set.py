"""Validation of the offline evaluation question set (eval/questions.jsonl).

Standard library + pytest only. Checks the schema, the type mix, that every
gold id exists in the corpus and that every key fact is a verbatim substring of
the abstract of at least one of the question's gold papers.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS_PATH = ROOT / "eval" / "questions.jsonl"
CORPUS_PATH = ROOT / "rag" / "data" / "corpus.jsonl"

TYPES = {"single_fact", "which_paper", "numeric", "multi_paper", "comparison", "unanswerable"}
FIELDS = {"id", "question", "type", "gold", "key_facts", "answer"}


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:  # pragma: no cover - reported as failure
                pytest.fail(f"{path.name}:{lineno} is not valid JSON: {exc}")
    return rows


@pytest.fixture(scope="module")
def questions() -> list[dict]:
    assert QUESTIONS_PATH.is_file(), f"missing {QUESTIONS_PATH}"
    return _read_jsonl(QUESTIONS_PATH)


@pytest.fixture(scope="module")
def abstracts() -> dict[str, str]:
    return {row["id"]: row["abstract"] for row in _read_jsonl(CORPUS_PATH)}


def _answerable(questions: list[dict]) -> list[dict]:
    return [q for q in questions if q["type"] != "unanswerable"]


def test_schema(questions):
    for q in questions:
        assert set(q) == FIELDS, f"{q.get('id')}: fields {sorted(q)}"
        assert re.fullmatch(r"q\d{3}", q["id"]), q["id"]
        assert isinstance(q["question"], str) and q["question"].strip(), q["id"]
        assert isinstance(q["answer"], str) and q["answer"].strip(), q["id"]
        assert q["type"] in TYPES, f"{q['id']}: unknown type {q['type']!r}"
        assert isinstance(q["gold"], list) and all(isinstance(g, str) for g in q["gold"]), q["id"]
        assert isinstance(q["key_facts"], list) and all(
            isinstance(f, str) and f.strip() for f in q["key_facts"]
        ), q["id"]
        assert len(set(q["gold"])) == len(q["gold"]), f"{q['id']}: duplicate gold ids"


def test_ids_unique(questions):
    ids = [q["id"] for q in questions]
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    assert not dupes, f"duplicate ids: {dupes}"


def test_size(questions):
    assert len(questions) >= 80


def test_all_types_present(questions):
    assert {q["type"] for q in questions} == TYPES


def test_unanswerable_share_and_empty(questions):
    unanswerable = [q for q in questions if q["type"] == "unanswerable"]
    assert len(unanswerable) * 10 >= len(questions), (
        f"only {len(unanswerable)} unanswerable of {len(questions)}"
    )
    for q in unanswerable:
        assert q["gold"] == [], f"{q['id']}: unanswerable with gold"
        assert q["key_facts"] == [], f"{q['id']}: unanswerable with key facts"


def test_answerable_have_gold_and_facts(questions):
    for q in _answerable(questions):
        assert len(q["gold"]) >= 1, f"{q['id']}: no gold ids"
        assert len(q["key_facts"]) >= 1, f"{q['id']}: no key facts"


def test_gold_ids_exist(questions, abstracts):
    missing = [(q["id"], g) for q in questions for g in q["gold"] if g not in abstracts]
    assert not missing, f"unknown gold ids: {missing}"


def test_key_facts_verbatim_in_gold(questions, abstracts):
    bad = []
    for q in _answerable(questions):
        for fact in q["key_facts"]:
            if not any(fact in abstracts.get(g, "") for g in q["gold"]):
                bad.append((q["id"], fact))
    assert not bad, f"key facts not found verbatim in a gold abstract: {bad}"


def test_multi_paper_has_several_gold(questions):
    for q in questions:
        if q["type"] == "multi_paper":
            assert len(q["gold"]) >= 2, f"{q['id']}: multi_paper with {len(q['gold'])} gold"


# --- the other sets: held-out, blind, and the rephrasings ------------------------------------

@pytest.mark.parametrize("name,prefix", [("heldout", "h"), ("blind", "b")])
def test_held_out_sets_follow_the_schema(name, prefix, abstracts):
    rows = _read_jsonl(ROOT / "eval" / f"{name}.jsonl")
    assert len({r["id"] for r in rows}) == len(rows)
    for q in rows:
        assert set(q) == FIELDS and q["id"].startswith(prefix) and q["type"] in TYPES, q.get("id")
        assert all(g in abstracts for g in q["gold"]), q["id"]
        assert all(any(f in abstracts[g] for g in q["gold"]) for f in q["key_facts"]), q["id"]
        assert bool(q["gold"]) == (q["type"] != "unanswerable"), q["id"]


def test_every_question_has_four_rephrasings_that_keep_its_answer():
    sources = {q["id"]: q for name in ("questions", "heldout") for q in _read_jsonl(ROOT / "eval" / f"{name}.jsonl")}
    rows = _read_jsonl(ROOT / "eval" / "rephrased.jsonl")
    styles: dict[str, list[str]] = {}
    for r in rows:
        src = sources[r["source"]]
        assert r["id"].startswith(r["source"] + "-"), r["id"]
        for key in ("type", "gold", "key_facts", "answer"):
            assert r[key] == src[key], (r["id"], key)
        assert r["question"].strip() and r["question"] != src["question"], r["id"]
        styles.setdefault(r["source"], []).append(r["style"])
    assert set(styles) == set(sources)
    assert all(sorted(s) == ["casual", "imperative", "keyword", "synonym"] for s in styles.values())
    assert all("?" not in r["question"] for r in rows if r["style"] in ("keyword", "casual"))
