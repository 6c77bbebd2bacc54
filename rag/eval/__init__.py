"""Batch evaluation: grade the assistant against a question set (see eval/README.md).

Rooms: `datasets` (question sets, PubMedQA), `metrics` (grading and summaries), `runner`
(asking a set), `report` (JSON, Markdown, chart, terminal summary), `compare` (two runs).

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

from .compare import compare, format_compare, load_run
from .datasets import Question, as_statement, is_pubmedqa, load_pubmedqa, load_questions
from .metrics import (
    HEADLINE,
    LABELS,
    LEAD_WORDS,
    LOWER_IS_BETTER,
    RETRIEVAL_HEADLINE,
    citation_pr,
    consistency,
    fact_in,
    grade,
    hit_at_k,
    judge_answer,
    key_fact_recall,
    lead,
    mrr,
    ndcg_at,
    parse_judge_score,
    problems,
    recall_at_k,
    summarise,
    summarise_retrieval,
)
from .report import (
    CHART_METRICS,
    CHART_RETRIEVAL,
    default_out_dir,
    default_root,
    format_summary,
    markdown_report,
    write_chart,
    write_reports,
)
from .runner import ROOT, SCHEMA_VERSION, git_commit, pubmedqa_assistant, run, run_retrieval

__all__ = [
    "Question",
    "load_questions",
    "is_pubmedqa",
    "as_statement",
    "load_pubmedqa",
    "HEADLINE",
    "RETRIEVAL_HEADLINE",
    "LOWER_IS_BETTER",
    "LABELS",
    "fact_in",
    "key_fact_recall",
    "LEAD_WORDS",
    "lead",
    "consistency",
    "recall_at_k",
    "hit_at_k",
    "mrr",
    "ndcg_at",
    "citation_pr",
    "grade",
    "problems",
    "parse_judge_score",
    "judge_answer",
    "summarise",
    "summarise_retrieval",
    "ROOT",
    "SCHEMA_VERSION",
    "git_commit",
    "run",
    "run_retrieval",
    "pubmedqa_assistant",
    "markdown_report",
    "CHART_METRICS",
    "CHART_RETRIEVAL",
    "write_chart",
    "default_out_dir",
    "write_reports",
    "default_root",
    "format_summary",
    "load_run",
    "compare",
    "format_compare",
]
