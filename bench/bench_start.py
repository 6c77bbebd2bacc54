"""`rag ask` from process start to printed answer, side by side with the floor.

The floor is `python -c "import chromadb, onnxruntime"`: what any process that opens a Chroma
index and runs the ONNX model pays before it does anything. Runs alternate (floor, ask, floor,
ask, ...) so both see the same machine load; the figure is the ratio of the medians. The index
is the bundled corpus in a temporary data dir, built and queried once before timing (warm
index: nothing is built during a timed run). With --other-python, the same `rag ask` runs with
another checkout's interpreter too (e.g. main's .venv, for a before/after); with --other-root,
the same interpreter imports `rag` from another checkout (PYTHONPATH), e.g. a worktree of the
commit before a change.

    python bench/bench_start.py [--runs 7] [--other-python ../main/.venv/bin/python]
    python bench/bench_start.py --other-root /tmp/before   # git worktree add --detach /tmp/before HEAD~3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import RESULTS, ROOT, clean_env, loadavg, write_json  # noqa: E402

QUESTION = "What accuracy does FaceNet reach on LFW?"
FLOOR = [sys.executable, "-c", "import chromadb, onnxruntime"]


def timed(cmd: list[str], env: dict, cwd: Path) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{cmd[:3]} failed ({p.returncode}): {p.stderr[-1500:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--other-python", type=Path, help="also time `rag ask` with this interpreter")
    ap.add_argument("--other-root", type=Path, help="also time `rag ask` importing rag from this checkout")
    ap.add_argument("--json", type=Path, default=RESULTS / "start.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="paper-rag-start-") as tmp:
        data = Path(tmp) / "data"
        env = clean_env(RAG_DATA_DIR=str(data), RAG_MODE="extractive")
        ask = [sys.executable, "-m", "rag.cli", "ask", QUESTION]
        cmds = {"floor": FLOOR, "ask": ask}
        if args.other_python or args.other_root:
            other = Path(tmp) / "other"
            cmds["other_ask"] = [str(args.other_python or sys.executable), "-m", "rag.cli", "ask", QUESTION]
            extra = {"PYTHONPATH": str(args.other_root.resolve())} if args.other_root else {}
            env_other = clean_env(RAG_DATA_DIR=str(other), RAG_MODE="extractive", **extra)
            timed(cmds["other_ask"], env_other, Path(tmp))  # builds its own index once
            timed(cmds["other_ask"], env_other, Path(tmp))
        timed(ask, env, ROOT)  # builds the index once
        timed(ask, env, ROOT)  # and whatever a first query persists
        times: dict[str, list[float]] = {k: [] for k in cmds}
        load = [loadavg()]
        for _ in range(args.runs):
            for name, cmd in cmds.items():
                times[name].append(timed(cmd, env_other if name == "other_ask" else env,
                                         Path(tmp) if name == "other_ask" else ROOT))
        load.append(loadavg())
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"runs": args.runs, "median_s": {k: round(v, 3) for k, v in med.items()},
           "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
           "ask_over_floor": round(med["ask"] / med["floor"], 2), "loadavg": load}
    if "other_ask" in med:
        res["other_ask_over_floor"] = round(med["other_ask"] / med["floor"], 2)
        res["other"] = str(args.other_root or args.other_python)
    write_json(args.json, res)
    print(f"floor (import chromadb, onnxruntime) {med['floor']:.2f}s | rag ask {med['ask']:.2f}s "
          f"= {res['ask_over_floor']:.2f}x" + (f" | other checkout's rag ask {med['other_ask']:.2f}s = "
                                               f"{res['other_ask_over_floor']:.2f}x" if "other_ask" in med else "")
          + f" | load {load[0]} -> {load[-1]}")


if __name__ == "__main__":
    main()
