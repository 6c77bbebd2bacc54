"""Diffing two runs: metric deltas, which way is better, and questions that changed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .metrics import LABELS, LOWER_IS_BETTER
from .report import _fmt, _metric_keys

# --- comparing runs --------------------------------------------------------------------------------

def load_run(path: str | Path) -> dict[str, Any]:
    from ..errors import RagError

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
                   f"commit={(r.get('git_commit') or '?')[:10]} settings={r.get('settings_hash')} "
                   f"({r.get('started_at')})")
    only = cmp.get("only_in", {})
    if only.get("A") or only.get("B"):
        out.append(f"note: the runs cover different questions ({len(only.get('A', []))} only in A, "
                   f"{len(only.get('B', []))} only in B); the deltas compare different sets")
    if cmp["settings_changed"]:
        out.append(
            "settings changed: " + ", ".join(f"{k}: {v[0]} -> {v[1]}" for k, v in cmp["settings_changed"].items())
        )

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
