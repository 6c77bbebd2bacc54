"""First-rank retrieval on claim-like queries: PubMedQA's questions rewritten as statements.

Builds (or reuses) the PubMedQA index (1,000 abstracts from ../shared/datasets/pubmedqa,
titles withheld), then ranks each abstract's own question and its statement form; then,
in a second index of the abstracts without their conclusions, each conclusion (a long,
claim-like query that must be matched by paraphrase); and our eval set's which-paper
questions against the bundled corpus. Prints recall@1/5/10 and MRR side by side for the
retriever as configured. Skips PubMedQA cleanly when the dataset is absent.

    .venv/bin/python bench/bench_claims.py [--data-dir DIR] [--limit N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PUBMEDQA = ROOT.parent / "shared" / "datasets" / "pubmedqa" / "ori_pqal.json"


def rank_stats(retriever, questions, depth: int = 10) -> dict[str, float]:
    r1 = r5 = r10 = mrr = 0.0
    times = []
    for q in questions:
        t0 = time.perf_counter()
        ranked = [c.paper_id for c in retriever.retrieve(q.question, k=depth).contexts]
        times.append((time.perf_counter() - t0) * 1000)
        gold = set(q.gold)
        hit = next((i for i, pid in enumerate(ranked) if pid in gold), None)
        r1 += hit == 0
        r5 += hit is not None and hit < 5
        r10 += hit is not None
        mrr += 1 / (hit + 1) if hit is not None else 0.0
    n = max(len(questions), 1)
    times.sort()
    return {"n": len(questions), "recall_at_1": round(r1 / n, 4), "recall_at_5": round(r5 / n, 4),
            "recall_at_10": round(r10 / n, 4), "mrr": round(mrr / n, 4),
            "p50_ms": round(times[len(times) // 2], 1) if times else None}


def main(argv: list[str] | None = None) -> int:
    from rag import Assistant, Settings
    from rag.eval import load_pubmedqa, load_questions, pubmedqa_assistant

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=ROOT / "bench" / "results" / "claims-index")
    ap.add_argument("--limit", type=int, help="only the first N PubMedQA questions")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args(argv)

    out: dict[str, dict] = {}
    if PUBMEDQA.is_file():
        papers, questions = load_pubmedqa(PUBMEDQA)
        _, statements = load_pubmedqa(PUBMEDQA, statements=True)
        a = pubmedqa_assistant(Settings(data_dir=args.data_dir))
        a.ingest(papers=papers)
        qs, ss = questions[: args.limit], statements[: args.limit]
        out["pubmedqa_questions"] = rank_stats(a.retriever, qs)
        out["pubmedqa_statements"] = rank_stats(a.retriever, ss)
        cpapers, conclusions = load_pubmedqa(PUBMEDQA, conclusions=True)
        c = pubmedqa_assistant(Settings(data_dir=args.data_dir / "conclusions"))
        c.ingest(papers=cpapers)
        out["pubmedqa_conclusions"] = rank_stats(c.retriever, conclusions[: args.limit])
    else:
        print(f"PubMedQA not found at {PUBMEDQA}: skipping it", file=sys.stderr)
    bundled = Assistant(Settings(data_dir=args.data_dir / "bundled"))
    bundled.ensure_index()
    ours = [q for f in ("questions", "heldout", "rephrased") for q in load_questions(ROOT / "eval" / f"{f}.jsonl")
            if q.type == "which_paper"]
    out["eval_which_paper"] = rank_stats(bundled.retriever, ours)
    width = max(len(k) for k in out)
    print(f"{'set':{width}s}  {'n':>5s} {'R@1':>6s} {'R@5':>6s} {'R@10':>6s} {'MRR':>6s} {'p50 ms':>7s}")
    for name, s in out.items():
        print(f"{name:{width}s}  {s['n']:5d} {s['recall_at_1']:6.3f} {s['recall_at_5']:6.3f} "
              f"{s['recall_at_10']:6.3f} {s['mrr']:6.3f} {s['p50_ms']:7.1f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
