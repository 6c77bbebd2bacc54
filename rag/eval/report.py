"""Reports of a run: JSON, Markdown and a PNG chart, and the terminal summary."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import HEADLINE, LABELS, RETRIEVAL_HEADLINE
from .runner import ROOT

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
    return Path(base or default_root() / "eval" / "runs") / name


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



def default_root() -> Path:
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
