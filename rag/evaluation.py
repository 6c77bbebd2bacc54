"""Batch evaluation: grade the assistant against a question set (see eval/README.md).

`run()` asks every question (streamed, so time to first token is measured), grades the
answer and returns a JSON-ready run object; `write_reports()` turns it into JSON,
Markdown and a PNG chart; `compare()` diffs two runs. PubMedQA's `ori_pqal.json` is
evaluated for retrieval only, on its own index (`run_retrieval()`).

Metric definitions (all in [0, 1] unless noted; None = not applicable):

- retrieval, answerable questions only: `recall_at_k` (share of gold papers among the k
  papers the answer step saw), `hit_at_k` (any gold among them), `mrr` (1 / rank of the
  first gold among them, 0 if none), `ndcg_at_10` (binary-gain nDCG over a 10-deep
  ranking of the same retriever);
- citations, answered answerable questions only: `citation_precision` (cited papers that
  are gold), `citation_recall` (gold papers that are cited); `invalid_citations` counts
  markers the assistant had to drop because they pointed at no retrieved paper;
- `key_fact_recall`: key facts found in the answer text (case-insensitive,
  whitespace-normalised substring); an abstention finds none;
- abstention: `abstention_rate` on unanswerable questions (higher is better),
  `false_abstention_rate` on answerable ones (lower is better);
- `groundedness`, every non-abstained answer: share of its sentences that cite a paper
  supporting them (`support()`), averaged over answers;
- `invented_specifics`: sentences shown that state a number (with its unit) or a name that
  the papers they cite do not state (summed; the guard of the generative modes keeps it at 0);
- `fallbacks`: generative answers where no model sentence survived the guard and the
  extractive answer was shown;
- latency (ms, client side, the whole run): p50/p95 of the time to the final answer
  and to the first streamed text.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .support import SupportChecker
from .types import Answer, Paper

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_VERSION = 1

# Offline support check for groundedness (documented in eval/README.md).

# The headline metrics, in report order; `LOWER_IS_BETTER` flips the sign of "better".
HEADLINE = ["hit_at_k", "recall_at_k", "mrr", "ndcg_at_10", "citation_precision", "citation_recall",
            "key_fact_recall", "key_facts_in_lead", "answer_words_p50", "consistency", "abstention_rate",
            "false_abstention_rate", "invalid_citations", "invented_specifics", "groundedness", "latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms"]
RETRIEVAL_HEADLINE = ["recall_at_1", "recall_at_5", "recall_at_10", "mrr", "ndcg_at_10",
                      "latency_p50_ms", "latency_p95_ms"]
LOWER_IS_BETTER = {"false_abstention_rate", "invalid_citations", "invented_specifics", "fallbacks", "latency_p50_ms", "latency_p95_ms", "answer_words_p50",
                   "ttft_p50_ms", "ttft_p95_ms", "errors"}
LABELS = {"hit_at_k": "hit@k", "recall_at_k": "recall@k", "mrr": "MRR", "ndcg_at_10": "nDCG@10",
          "citation_precision": "citation precision", "citation_recall": "citation recall",
          "key_fact_recall": "key-fact recall", "key_facts_in_lead": "key facts in first 40 words",
          "answer_words_p50": "median answer words", "consistency": "consistency (rephrasings)", "abstention_rate": "abstention (unanswerable)",
          "false_abstention_rate": "false abstention", "abstention_accuracy": "abstain/answer right", "invalid_citations": "invalid citations", "invented_specifics": "invented numbers/names shown",
          "fallbacks": "extractive fallbacks",
          "groundedness": "groundedness", "latency_p50_ms": "latency p50 ms", "latency_p95_ms": "latency p95 ms",
          "ttft_p50_ms": "first token p50 ms", "ttft_p95_ms": "first token p95 ms", "judge_score": "judge (1-5)",
          "recall_at_1": "recall@1", "recall_at_5": "recall@5", "recall_at_10": "recall@10",
          "pass_rate": "questions passed", "errors": "errors", "n": "questions"}


# --- question sets ------------------------------------------------------------------

@dataclass
class Question:
    id: str
    question: str
    type: str
    gold: list[str]
    key_facts: list[str] = field(default_factory=list)
    answer: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # for a rephrasing, the id of the question it rephrases
    style: str = ""  # keyword | imperative | casual | synonym (rephrasings)

    @property
    def group(self) -> str:
        """Rephrasings of one question share a group (for consistency)."""
        return self.source or self.id

    @property
    def answerable(self) -> bool:
        return bool(self.gold)


def load_questions(path: str | Path) -> list[Question]:
    """Our JSONL schema (eval/README.md)."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                d = json.loads(line)
                out.append(Question(str(d["id"]), d["question"], d.get("type", "unknown"),
                                    [str(g) for g in d.get("gold", [])], list(d.get("key_facts", [])),
                                    d.get("answer", ""), source=str(d.get("source") or ""),
                                    style=str(d.get("style") or "original")))
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                from .errors import CorpusError

                raise CorpusError(f"not a question record ({type(exc).__name__}: {exc})", file=str(path),
                                  line=n, hint="See eval/README.md for the question schema.") from None
    return out


def is_pubmedqa(path: str | Path) -> bool:
    """PubMedQA's ori_pqal.json: one JSON object keyed by PubMed id."""
    path = Path(path)
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    with path.open(encoding="utf-8") as fh:
        head = fh.read(4096).lstrip()
    return head.startswith("{") and '"QUESTION"' in head


_AUX = ("do", "does", "did", "is", "are", "was", "were", "can", "could", "should", "will", "would", "has", "have",
        "had", "may", "might", "must")
_PREDICATE_START = re.compile(
    r"^(?:\w+(?:ed|en|ive|able|ible|ful|ous|ent|ant)|associated|related|linked|necessary|effective|useful|"
    r"safe|better|worse|superior|inferior|different|present|available|possible|due|able|likely|sufficient|reliable|"
    r"accurate|common|important|feasible|predictive|more|less|still|really|also|worth|true|a|an)$", re.I)


def as_statement(question: str) -> str:
    """A yes/no question rewritten as the claim it tests, for claim-like retrieval queries:
    'Do mitochondria play a role in ...?' -> 'Mitochondria play a role in ...';
    'Is X associated with Y?' -> 'X is associated with Y'. Rule-based, so approximate
    (the subject ends before the first word that looks like the start of a predicate)."""
    q = question.strip().rstrip("?").strip()
    words_ = q.split()
    if len(words_) < 3 or words_[0].lower() not in _AUX:
        return q
    aux, rest = words_[0].lower(), words_[1:]
    if aux in ("do", "does", "did", "can", "could", "should", "will", "would", "may", "might", "must"):
        out = rest
    else:
        cut = next((i for i in range(1, len(rest)) if _PREDICATE_START.match(rest[i])), None)
        out = rest if cut is None else rest[:cut] + [aux] + rest[cut:]
    text = " ".join(out)
    return text[:1].upper() + text[1:] + "."


def load_pubmedqa(path: str | Path, statements: bool = False,
                  conclusions: bool = False) -> tuple[list[Paper], list[Question]]:
    """Papers and questions from PubMedQA's format; each question's gold is its own abstract.

    The question is not used as the title (it would leak the answer into the index):
    the title is "PubMed <id>" and the text is the CONTEXTS followed by the LONG_ANSWER.
    `statements`: ask each yes/no question as the claim it tests (`as_statement`).
    `conclusions`: a harder claim-retrieval set: the abstract's conclusion (LONG_ANSWER) is
    the query and is left out of the indexed text, so it must be matched by paraphrase.
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        from .errors import CorpusError

        raise CorpusError("expected one JSON object keyed by PubMed id", file=str(path))
    papers: list[Paper] = []
    questions: list[Question] = []
    for pmid, rec in data.items():
        pmid = str(pmid)
        contexts = rec.get("CONTEXTS") or []
        text = " ".join(str(c).strip() for c in contexts)
        long_answer = str(rec.get("LONG_ANSWER") or "").strip()
        abstract = text if conclusions else f"{text} {long_answer}".strip()
        if not abstract or not str(rec.get("QUESTION") or "").strip():
            continue
        year = rec.get("YEAR")
        papers.append(Paper(id=pmid, title=f"PubMed {pmid}", abstract=abstract,
                            url=f"https://pubmed.ncbi.nlm.nih.gov/{pmid}/",
                            year=int(year) if str(year or "").isdigit() else None))
        asked = long_answer if conclusions else str(rec["QUESTION"]).strip()
        if not asked:
            continue
        questions.append(Question(pmid, as_statement(asked) if statements else asked, "pubmedqa", [pmid], [],
                                  long_answer, meta={"final_decision": rec.get("final_decision")}))
    return papers, questions


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
          support: SupportChecker | None = None) -> dict[str, Any]:
    """Metrics of one answer. `ranking` is a deeper ranking for nDCG@10 (default: the
    answer's own contexts); `support` adds groundedness."""
    retrieved = [c.paper_id for c in sorted(a.contexts, key=lambda c: c.rank or c.n)]
    cited = list(dict.fromkeys(c.paper_id for c in a.citations))
    row: dict[str, Any] = {"id": q.id, "type": q.type, "abstained": a.abstained, "cited": cited,
                           "retrieved": retrieved[:k], "invalid_citations": a.invalid_citations,
                           "group": q.group, "style": q.style}
    if support is not None and not a.abstained:
        g = support.check(a)
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
    from .prompting import render

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


# --- run metadata ------------------------------------------------------------------------------

def git_commit(cwd: Path = ROOT) -> dict[str, Any]:
    """HEAD and whether the work tree has uncommitted changes (read-only git calls)."""
    def git(*cmd: str) -> str | None:
        try:
            out = subprocess.run(["git", *cmd], cwd=cwd, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="q", file=sys.stderr, dynamic_ncols=True, disable=not enabled)


def _map(fn, items: Sequence, concurrency: int, bar) -> list:
    """fn over items, in order, on a thread pool; the bar ticks as each finishes."""
    results: list = [None] * len(items)

    def work(i: int):
        results[i] = fn(items[i])
        bar.update(1)

    if concurrency <= 1:
        for i in range(len(items)):
            work(i)
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for f in [pool.submit(work, i) for i in range(len(items))]:
                f.result()
    return results


def _meta(assistant, mode: str, k: int, n: int, concurrency: int, started: str, t0: float,
          source: str | None, kind: str) -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "kind": kind, "set": source, "mode": mode, "k": k,
            "n_questions": n, "concurrency": concurrency, "started_at": started, "finished_at": _now(),
            "duration_s": round(time.perf_counter() - t0, 2),
            "settings": assistant.settings.public_dict(), "settings_hash": assistant.settings.fingerprint(),
            "index": {"location": assistant.store.location, "papers": assistant.store.count()},
            **git_commit()}


# --- the runs ------------------------------------------------------------------------------------

def run(assistant, questions: Sequence[Question], k: int | None = None, mode: str | None = None,
        limit: int | None = None, concurrency: int = 1, progress: bool = True, judge: bool = False,
        source: str | None = None, stream: bool = True) -> dict[str, Any]:
    """Ask every question, grade it, summarise overall and by type. `stream=False` asks
    with `Assistant.ask` (one plain request to a chat model; first token = the whole answer)."""
    from .errors import RagError

    questions = list(questions)[:limit] if limit else list(questions)
    k = k or assistant.settings.k
    mode = mode or assistant.mode
    if mode == "openai":
        assistant.llm  # no LLM configured: one ConfigError now, not one per question
    llm = assistant.llm if judge else None
    # The same check as the guard's, with the corpus's IDF for the rare-word test.
    checker = SupportChecker(assistant.store.embedder.embed, idf=assistant.retriever.lexical().term_idf)
    started, t0 = _now(), time.perf_counter()

    def one(q: Question) -> dict[str, Any]:
        base = {"id": q.id, "type": q.type, "question": q.question, "gold": q.gold}
        try:
            t_start = time.perf_counter()
            first = None
            answer: Answer | None = None
            if stream:
                for piece in assistant.stream(q.question, k=k, mode=mode):
                    if isinstance(piece, str):
                        if first is None and piece:
                            first = time.perf_counter()
                    else:
                        answer = piece
            else:
                answer = assistant.ask(q.question, k=k, mode=mode)
            t_end = time.perf_counter()
            assert answer is not None
            ranking = None
            if k < 10 and q.answerable:
                ranking = [c.paper_id for c in assistant.retrieve(q.question, k=10).contexts]
            row = {**base, **grade(q, answer, k, ranking=ranking, support=checker)}
            row.update(answer=answer.text, abstain_reason=answer.meta.get("abstain_reason"),
                       total_ms=round((t_end - t_start) * 1000, 1),
                       first_token_ms=round(((first or t_end) - t_start) * 1000, 1),
                       timings_ms={key: round(v, 1) for key, v in answer.timings_ms.items()})
            if ranking is not None:
                row["ranking"] = ranking
            if llm is not None and q.answer:
                try:
                    row["judge_score"], row["judge_reply"] = judge_answer(llm, q.question, q.answer, answer.text)
                except Exception as exc:  # a judge failure must not lose the run
                    row["judge_score"], row["judge_error"] = None, f"{type(exc).__name__}: {exc}"
        except RagError as exc:
            row = {**base, "error": exc.message, "abstained": False, "invalid_citations": 0}
        row["problems"] = problems(row)
        row["passed"] = not row["problems"]
        return row

    with _progress_bar(len(questions), f"Evaluating ({mode})", progress) as bar:
        rows = _map(one, questions, max(1, concurrency), bar)
    out = _meta(assistant, mode, k, len(questions), concurrency, started, t0, source, "qa")
    out["judge"] = bool(judge)
    out["stream"] = bool(stream)
    out["support_thresholds"] = checker.thresholds()
    out["summary"] = {"overall": summarise(rows), "by_type": _by_type(rows, summarise)}
    if len({r.get("style") for r in rows}) > 1:
        out["summary"]["by_style"] = _by_type(rows, summarise, key="style")
    out["questions"] = rows
    return out


def run_retrieval(assistant, questions: Sequence[Question], depth: int = 10, limit: int | None = None,
                  concurrency: int = 1, progress: bool = True, source: str | None = None) -> dict[str, Any]:
    """Retrieval only (no answers): recall@1/5/10, MRR and nDCG@10 of each question's gold."""
    from .errors import RagError

    questions = list(questions)[:limit] if limit else list(questions)
    started, t0 = _now(), time.perf_counter()

    def one(q: Question) -> dict[str, Any]:
        row: dict[str, Any] = {"id": q.id, "type": q.type, "question": q.question, "gold": q.gold,
                               "kind": "retrieval", "depth": depth}
        try:
            t = time.perf_counter()
            ranked = [c.paper_id for c in assistant.retrieve(q.question, k=depth).contexts]
            row["total_ms"] = round((time.perf_counter() - t) * 1000, 1)
        except RagError as exc:
            row["error"] = exc.message
        else:
            rank = next((i + 1 for i, pid in enumerate(ranked) if pid in set(q.gold)), None)
            row.update(retrieved=ranked, rank=rank, recall_at_1=recall_at_k(ranked, q.gold, 1),
                       recall_at_5=recall_at_k(ranked, q.gold, 5), recall_at_10=recall_at_k(ranked, q.gold, 10),
                       mrr=mrr(ranked, q.gold), ndcg_at_10=ndcg_at(ranked, q.gold, 10))
        row["problems"] = problems(row)
        row["passed"] = not row["problems"]
        return row

    with _progress_bar(len(questions), "Retrieving", progress) as bar:
        rows = _map(one, questions, max(1, concurrency), bar)
    out = _meta(assistant, "retrieval", depth, len(questions), concurrency, started, t0, source, "retrieval")
    out["summary"] = {"overall": summarise_retrieval(rows), "by_type": _by_type(rows, summarise_retrieval)}
    out["questions"] = rows
    return out


def pubmedqa_assistant(settings, llm=None):
    """An Assistant on a separate index for PubMedQA: <data_dir>/pubmedqa, collection 'pubmedqa'."""
    from .assistant import Assistant

    if settings.chroma_url:  # one server: keep the papers apart by collection name
        return Assistant(settings.model_copy(update={"collection": "pubmedqa"}), llm=llm)
    return Assistant(settings.model_copy(update={"data_dir": Path(settings.data_dir) / "pubmedqa",
                                                 "collection": "pubmedqa"}), llm=llm)


# --- reports --------------------------------------------------------------------------------------

def _fmt(v: Any, key: str = "") -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.0f}" if key.endswith("_ms") else f"{v:.3f}"
    return str(v)


def _metric_keys(run_obj: dict[str, Any]) -> list[str]:
    keys = RETRIEVAL_HEADLINE if run_obj.get("kind") == "retrieval" else list(HEADLINE)
    if "judge_score" in run_obj["summary"]["overall"]:
        keys = keys + ["judge_score"]
    return keys + ["pass_rate"]


def markdown_report(run_obj: dict[str, Any], chart_name: str | None = "chart.png",
                    max_failures: int = 300) -> str:
    s = run_obj["summary"]
    keys = _metric_keys(run_obj)
    lines = [f"# Evaluation: {Path(run_obj.get('set') or 'questions').name} ({run_obj['mode']})", ""]
    dirty = " (uncommitted changes)" if run_obj.get("git_dirty") else ""
    depth = "retrieval depth" if run_obj.get("kind") == "retrieval" else "k"
    lines += [f"- questions: {run_obj['n_questions']}, {depth} = {run_obj['k']}, concurrency {run_obj['concurrency']}",
              f"- started {run_obj['started_at']}, took {run_obj['duration_s']} s",
              f"- git commit: `{run_obj.get('git_commit') or 'unknown'}`{dirty}",
              f"- settings hash: `{run_obj['settings_hash']}`"]
    if run_obj.get("index"):
        lines.append(f"- index: {run_obj['index']['location']} ({run_obj['index']['papers']} papers)")
    if run_obj.get("kind") == "retrieval":
        lines.append("- retrieval only (no answers); a question fails when its gold abstract is not in the top 5")
    if run_obj.get("support_thresholds"):
        t = run_obj["support_thresholds"]
        lines.append(f"- groundedness support: cosine >= {t['cosine']} or term overlap >= {t['overlap']}")
    lines += ["", "## Summary", "", "| metric | overall |", "|---|---|"]
    lines += [f"| {LABELS.get(m, m)} | {_fmt(s['overall'].get(m), m)} |" for m in keys]
    types = list(s["by_type"])
    if len(types) > 1 or run_obj.get("kind") != "retrieval":
        lines += ["", "## By question type", "",
                  "| metric | " + " | ".join(f"{t} ({s['by_type'][t]['n']})" for t in types) + " |",
                  "|---|" + "---|" * len(types)]
        for m in keys:
            lines.append(f"| {LABELS.get(m, m)} | " + " | ".join(_fmt(s["by_type"][t].get(m), m) for t in types) + " |")
    if chart_name:
        lines += ["", f"![metrics by question type]({chart_name})"]
    failing = [r for r in run_obj["questions"] if not r.get("passed")]
    lines += ["", f"## Failing questions ({len(failing)} of {len(run_obj['questions'])})", ""]
    for r in failing[:max_failures]:
        lines.append(f"- **{r['id']}** ({r['type']}): {r['question']}")
        for p in r.get("problems", []):
            lines.append(f"  - {p}")
    if len(failing) > max_failures:
        lines.append(f"- ... and {len(failing) - max_failures} more (see the JSON file)")
    if not failing:
        lines.append("None.")
    return "\n".join(lines) + "\n"


CHART_METRICS = [("recall_at_k", "recall@k"), ("mrr", "MRR"), ("ndcg_at_10", "nDCG@10"),
                 ("citation_precision", "cit. precision"), ("citation_recall", "cit. recall"),
                 ("key_fact_recall", "key facts"), ("groundedness", "groundedness"),
                 ("abstention_accuracy", "abstain/answer right")]
CHART_RETRIEVAL = [("recall_at_1", "recall@1"), ("recall_at_5", "recall@5"), ("recall_at_10", "recall@10"),
                   ("mrr", "MRR"), ("ndcg_at_10", "nDCG@10")]


def write_chart(run_obj: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars: the main metrics for each question type and overall."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    s = run_obj["summary"]
    groups = {**s["by_type"], "overall": s["overall"]}
    metrics = CHART_RETRIEVAL if run_obj.get("kind") == "retrieval" else CHART_METRICS

    def value(g: dict[str, Any], key: str) -> float:
        v = g.get(key)
        return float("nan") if v is None else float(v)

    names = list(groups)
    x = np.arange(len(names))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(names) + 3), 4.8), dpi=110)
    cmap = plt.get_cmap("tab10")
    for i, (key, label) in enumerate(metrics):
        ax.bar(x - 0.4 + width * (i + 0.5), [value(groups[n], key) for n in names], width, label=label, color=cmap(i))
    ax.set_xticks(x, [f"{n}\n(n={groups[n]['n']})" for n in names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    title = Path(run_obj.get("set") or "questions").name
    ax.set_title(f"{title}: {run_obj['mode']}, k={run_obj['k']} ({(run_obj.get('git_commit') or '')[:8]})", fontsize=10)
    ax.legend(fontsize=7, ncol=min(4, len(metrics)), loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def default_out_dir(run_obj: dict[str, Any], base: str | Path | None = None) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = f"{stamp}-{run_obj['mode']}"
    set_name = Path(run_obj.get("set") or "questions.jsonl").stem
    if set_name != "questions":
        name += f"-{re.sub(r'[^A-Za-z0-9_.-]+', '_', set_name)}"
    return Path(base or _default_root() / "eval" / "runs") / name


def write_reports(run_obj: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """run.json, report.md and chart.png in out_dir (created)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "run.json", "markdown": out / "report.md", "chart": out / "chart.png"}
    paths["json"].write_text(json.dumps(run_obj, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    try:
        write_chart(run_obj, paths["chart"])
        chart_name: str | None = paths["chart"].name
    except ImportError:
        print("note: matplotlib is not installed, so no chart (pip install 'paper-rag[eval]')", file=sys.stderr)
        paths.pop("chart")
        chart_name = None
    paths["markdown"].write_text(markdown_report(run_obj, chart_name), encoding="utf-8")
    return paths


# --- comparing runs --------------------------------------------------------------------------------

def load_run(path: str | Path) -> dict[str, Any]:
    from .errors import RagError

    p = Path(path)
    if p.is_dir():
        p = p / "run.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RagError(f"no such run file: {p}", "Pass the run.json written by `rag eval` (or its folder).") from None
    except json.JSONDecodeError as exc:
        raise RagError(f"{p} is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or "summary" not in data or "questions" not in data:
        raise RagError(f"{p} is not a `rag eval` run file", "Pass the run.json written by `rag eval`.")
    return data


def _delta(a: Any, b: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return round(float(b) - float(a), 4)
    return None


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Per-metric deltas (B - A), overall and by type, and the questions whose outcome changed."""
    keys = [m for m in dict.fromkeys(_metric_keys(a) + _metric_keys(b))]

    def table(sa: dict[str, Any], sb: dict[str, Any]) -> dict[str, Any]:
        return {m: {"a": sa.get(m), "b": sb.get(m), "delta": _delta(sa.get(m), sb.get(m))}
                for m in keys if sa.get(m) is not None or sb.get(m) is not None}

    sa, sb = a["summary"], b["summary"]
    types = list(dict.fromkeys(list(sa["by_type"]) + list(sb["by_type"])))
    rows_a = {r["id"]: r for r in a["questions"]}
    rows_b = {r["id"]: r for r in b["questions"]}
    changed = []
    only = {"A": [q for q in rows_a if q not in rows_b], "B": [q for q in rows_b if q not in rows_a]}
    for qid in (q for q in rows_b if q in rows_a):
        ra, rb = rows_a[qid], rows_b[qid]
        pa, pb = set(ra.get("problems", [])), set(rb.get("problems", []))
        if ra.get("passed") != rb.get("passed") or pa != pb or ra.get("abstained") != rb.get("abstained"):
            change = ("fixed" if rb.get("passed") else "broken") if ra.get("passed") != rb.get("passed") else "changed"
            changed.append({"id": qid, "type": rb["type"], "question": rb.get("question", ""), "change": change,
                            "resolved": sorted(pa - pb), "new": sorted(pb - pa),
                            "abstained": [ra.get("abstained"), rb.get("abstained")]})
    order = {"broken": 0, "fixed": 1, "changed": 2}
    changed.sort(key=lambda c: order[c["change"]])
    settings_diff = {k: [a.get("settings", {}).get(k), b.get("settings", {}).get(k)]
                     for k in sorted(set(a.get("settings", {})) | set(b.get("settings", {})))
                     if a.get("settings", {}).get(k) != b.get("settings", {}).get(k)}
    return {"a": {k: a.get(k) for k in ("set", "mode", "k", "git_commit", "settings_hash", "started_at")},
            "b": {k: b.get(k) for k in ("set", "mode", "k", "git_commit", "settings_hash", "started_at")},
            "settings_changed": settings_diff,
            "overall": table(sa["overall"], sb["overall"]),
            "by_type": {t: table(sa["by_type"].get(t, {}), sb["by_type"].get(t, {})) for t in types},
            "changed": changed, "only_in": only}


def _arrow(m: str, d: float | None) -> str:
    if not d:
        return ""
    better = (d < 0) if m in LOWER_IS_BETTER else (d > 0)
    return "  better" if better else "  worse"


def format_compare(cmp: dict[str, Any]) -> str:
    out = []
    for side in ("a", "b"):
        r = cmp[side]
        out.append(f"{side.upper()}: {r.get('set')} mode={r.get('mode')} k={r.get('k')} "
                   f"commit={(r.get('git_commit') or '?')[:10]} settings={r.get('settings_hash')} ({r.get('started_at')})")
    only = cmp.get("only_in", {})
    if only.get("A") or only.get("B"):
        out.append(f"note: the runs cover different questions ({len(only.get('A', []))} only in A, "
                   f"{len(only.get('B', []))} only in B); the deltas compare different sets")
    if cmp["settings_changed"]:
        out.append("settings changed: " + ", ".join(f"{k}: {v[0]} -> {v[1]}" for k, v in cmp["settings_changed"].items()))

    def block(title: str, table: dict[str, Any]) -> None:
        out.append(f"\n{title}")
        out.append(f"  {'metric':26s} {'A':>9s} {'B':>9s} {'B-A':>9s}")
        for m, v in table.items():
            d = v["delta"]
            ds = "–" if d is None else (f"{d:+.0f}" if m.endswith("_ms") else f"{d:+.3f}")
            out.append(f"  {LABELS.get(m, m):26s} {_fmt(v['a'], m):>9s} {_fmt(v['b'], m):>9s} {ds:>9s}{_arrow(m, d)}")

    block("overall", cmp["overall"])
    for t, table in cmp["by_type"].items():
        block(f"type {t}", table)
    counts = {c: sum(1 for x in cmp["changed"] if x["change"] == c) for c in ("broken", "fixed", "changed")}
    out.append(f"\nquestions whose outcome changed: {len(cmp['changed'])} "
               f"({counts['broken']} broken, {counts['fixed']} fixed, {counts['changed']} with other changes)")
    for c in cmp["changed"]:
        out.append(f"  {c['id']} ({c['type']}): {c['change']}")
        for p in c.get("resolved", []):
            out.append(f"      - {p}")
        for p in c.get("new", []):
            out.append(f"      + {p}")
    for side in ("A", "B"):
        ids = only.get(side, [])
        if ids:
            out.append(f"  only in {side} ({len(ids)}): " + ", ".join(ids[:30]) + (" ..." if len(ids) > 30 else ""))
    return "\n".join(out)


# --- command line ----------------------------------------------------------------------------------

def _default_root() -> Path:
    """The folder holding eval/: the current one if it has eval/questions.jsonl, else the repo."""
    cwd = Path.cwd()
    return cwd if (cwd / "eval" / "questions.jsonl").is_file() else ROOT


def format_summary(run_obj: dict[str, Any]) -> str:
    s = run_obj["summary"]
    keys = _metric_keys(run_obj)
    types = list(s["by_type"])
    show_types = len(types) > 1
    head = f"{'metric':26s} {'overall':>9s}" + ("".join(f" {t[:12]:>12s}" for t in types) if show_types else "")
    lines = [head]
    for m in keys:
        line = f"{LABELS.get(m, m):26s} {_fmt(s['overall'].get(m), m):>9s}"
        if show_types:
            line += "".join(f" {_fmt(s['by_type'][t].get(m), m):>12s}" for t in types)
        lines.append(line)
    n_fail = sum(1 for r in run_obj["questions"] if not r.get("passed"))
    lines.append(f"\n{run_obj['n_questions']} questions, {n_fail} with problems, "
                 f"{run_obj['duration_s']} s (mode {run_obj['mode']}, k={run_obj['k']}, "
                 f"settings {run_obj['settings_hash']}, commit {(run_obj.get('git_commit') or '?')[:10]})")
    return "\n".join(lines)


def _report(run_obj: dict[str, Any], args) -> int:
    out_dir = Path(args.out) if getattr(args, "out", None) else default_out_dir(run_obj)
    paths = write_reports(run_obj, out_dir)
    if getattr(args, "json", False):
        print(json.dumps({"summary": run_obj["summary"], "settings_hash": run_obj["settings_hash"],
                          "git_commit": run_obj.get("git_commit"),
                          "files": {k: str(v) for k, v in paths.items()}}, indent=2))
    else:
        print(format_summary(run_obj))
        print("reports: " + ", ".join(str(p) for p in paths.values()))
    return 0


def cli(args) -> int:
    """`rag eval`: run a question set (or PubMedQA) and write the reports, or compare two runs."""
    from .cli import _assistant, _progress
    from .errors import RagError

    if getattr(args, "compare", None):
        a, b = (load_run(p) for p in args.compare)
        cmp = compare(a, b)
        print(json.dumps(cmp, indent=2, default=str) if args.json else format_compare(cmp))
        return 0

    set_path = Path(args.set_path) if getattr(args, "set_path", None) else _default_root() / "eval" / "questions.jsonl"
    if not set_path.is_file():
        raise RagError(f"question set not found: {set_path}", "Pass --set PATH (JSONL, or PubMedQA's ori_pqal.json).")
    if args.limit is not None and args.limit < 1:
        raise RagError("--limit must be at least 1")
    concurrency = max(1, int(getattr(args, "concurrency", 1) or 1))

    if is_pubmedqa(set_path):
        base = _assistant(args)
        papers, questions = load_pubmedqa(set_path)
        a = pubmedqa_assistant(base.settings)
        print(f"PubMedQA: {len(papers)} abstracts, {len(questions)} questions; index {a.settings.data_dir} "
              f"(collection '{a.settings.collection}'), retrieval only", file=sys.stderr)
        report, _ = a.ingest(papers=papers, progress=_progress())
        if report.changed:
            print(report.summary(), file=sys.stderr)
        if args.judge:
            print("note: --judge is ignored for PubMedQA (retrieval only)", file=sys.stderr)
        result = run_retrieval(a, questions, depth=max(10, args.k or 10), limit=args.limit, concurrency=concurrency,
                               source=str(set_path))
        return _report(result, args)

    questions = load_questions(set_path)
    if not questions:
        raise RagError(f"{set_path} has no questions")
    a = _assistant(args)
    if args.judge:
        from .errors import ConfigError

        try:
            a.llm
        except ConfigError:
            raise RagError("--judge needs an LLM to grade with, and none is configured",
                           "Set OPENAI_API_KEY (or OPENAI_BASE_URL for a local OpenAI-compatible server); "
                           "the judge uses RAG_LLM_MODEL. Answers can still come from --mode extractive.") from None
    a.ensure_index(progress=_progress())
    gold = {g for q in questions for g in q.gold}
    missing = sorted(gold - a.store.existing_ids(gold))
    if missing:
        print(f"warning: {len(missing)} gold paper(s) are not in the index at {a.store.location} "
              f"(e.g. {missing[0]}); retrieval scores will be low. The set is written for the bundled "
              f"corpus: `rag ingest --bundled`.", file=sys.stderr)
    result = run(a, questions, k=args.k, mode=args.mode, limit=args.limit, concurrency=concurrency,
                 judge=args.judge, source=str(set_path), stream=not getattr(args, "no_stream", False))
    return _report(result, args)
