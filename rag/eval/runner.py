"""Running a set: ask every question (on a thread pool, with a progress bar), grade it,
and return a JSON-ready run object with the settings and commit it was made with."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..types import Answer
from .datasets import Question
from .metrics import (
    _by_type,
    grade,
    judge_answer,
    mrr,
    ndcg_at,
    problems,
    recall_at_k,
    summarise,
    summarise_retrieval,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_VERSION = 1

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
    return datetime.now(UTC).isoformat(timespec="seconds")


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
    from ..errors import RagError

    questions = list(questions)[:limit] if limit else list(questions)
    k = k or assistant.settings.k
    mode = mode or assistant.mode
    if mode == "openai":
        _ = assistant.llm  # no LLM configured: one ConfigError now, not one per question
    llm = assistant.llm if judge else None
    # The guard's own check (one per assistant), with the corpus's IDF for the rare-word test.
    checker = assistant.support_checker()
    idf = assistant.retriever.lexical().term_idf
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
            row = {**base, **grade(q, answer, k, ranking=ranking, support=checker, idf=idf)}
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
    from ..errors import RagError

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
    from ..assistant import Assistant

    if settings.chroma_url:  # one server: keep the papers apart by collection name
        return Assistant(settings.model_copy(update={"collection": "pubmedqa"}), llm=llm)
    return Assistant(settings.model_copy(update={"data_dir": Path(settings.data_dir) / "pubmedqa",
                                                 "collection": "pubmedqa"}), llm=llm)
