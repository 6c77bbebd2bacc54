"""Small helpers shared by the benchmark scripts (no product logic here)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
QUESTIONS = ROOT / "eval" / "questions.jsonl"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def pct(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def summary_ms(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {}
    return {"p50": round(statistics.median(values_ms), 1), "p95": round(pct(values_ms, 95), 1),
            "mean": round(statistics.fmean(values_ms), 1), "max": round(max(values_ms), 1), "n": len(values_ms)}


def du_bytes(path: Path) -> dict[str, int]:
    """Disk usage of a folder: allocated bytes (what `du` reports) and apparent bytes."""
    allocated = apparent = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            allocated += st.st_blocks * 512
            apparent += st.st_size
    return {"allocated": allocated, "apparent": apparent}


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without RAG_* / OPENAI_* so a subprocess sees only what we set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "OPENAI_"))}
    env.update(extra)
    return env


def memory_mib(pid: int | str = "self") -> dict[str, float]:
    """A process's current and peak resident memory (this one's by default), from
    /proc/PID/status.

    Not `ru_maxrss`: Linux carries it across execve, so a process started by a 3 GB parent
    reports the parent's peak (the answering process of bench_scale did, until this was found).
    VmHWM belongs to the address space, which execve replaces."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = round(int(value.split()[0]) / 1024, 1)  # kB
    except OSError:
        pass
    return {"rss_mib": out.get("VmRSS", float("nan")), "peak_rss_mib": out.get("VmHWM", float("nan"))}


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict:
    info = {
        "cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
        "loadavg_at_start": loadavg(), "when": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    try:
        import psutil

        info["mem_total_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:  # read-only
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    versions = {}
    from importlib import metadata

    for pkg in ("chromadb", "onnxruntime", "tokenizers", "bm25s", "tiktoken", "langchain-core", "langchain-chroma",
                "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    info["versions"] = versions
    return info


def load_question_texts(n: int | None = None) -> list[str]:
    from rag.eval import load_questions

    qs = [q.question for q in load_questions(QUESTIONS)]
    return qs[:n] if n else qs


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


class Progress:
    """A tqdm-like factory for `ingest(progress=...)` that prints a line every `every` items
    (bench logs stay readable) and can checkpoint its count and elapsed time to a file."""

    def __init__(self, label: str = "", every: int = 250, checkpoint: Path | None = None,
                 offset_done: int = 0, offset_s: float = 0.0):
        self.label, self.every, self.checkpoint = label, every, checkpoint
        self.offset_done, self.offset_s = offset_done, offset_s

    def __call__(self, total: int = 0, desc: str = "", unit: str = "it", **_):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = 0
        self.t0 = time.perf_counter()
        print(f"  {self.label}{desc}: {total} {unit}s to do", flush=True)
        return self

    def update(self, k: int = 1) -> None:
        before, self.n = self.n, self.n + k
        if self.n // self.every > before // self.every or self.n >= self.total:
            dt = time.perf_counter() - self.t0
            rate = self.n / dt if dt else 0.0
            eta = (self.total - self.n) / rate if rate else 0.0
            print(f"  {self.label}{self.n}/{self.total} {self.unit}s  {rate:.1f}/s  elapsed {dt:.0f}s  "
                  f"eta {eta:.0f}s  load {loadavg()}", flush=True)
            if self.checkpoint is not None:
                write_json(self.checkpoint, {"done": self.offset_done + self.n, "elapsed_s": self.offset_s + dt})

    def close(self) -> None:
        pass
