"""Side-by-side benchmark in ONE process, same texts, same model files. Prints figures, asserts nothing.

  1. floor:  our raw ONNX model (`OnnxMiniLM.embed`, dynamic padding) on exactly the texts
             ingest embeds (bundled corpus -> Chunker.chunk_papers -> chunk.embed_text),
             next to Chroma's own `ONNXMiniLM_L6_V2` (pads every text to 256) on the same texts;
  2. plain recipe: LangChain `langchain_chroma.Chroma.from_documents(docs, embedding=<adapter
             around Chroma's ONNXMiniLM_L6_V2>)` into a temp dir, then `similarity_search(q, k=5)`
             (what the standard LangChain tutorial gives, offline);
  3. ours:   `Assistant.ingest(papers=...)` into a fresh temp dir, then `retrieve` and extractive
             `ask` on every question of eval/questions.jsonl;
  4. cold start: a fresh `python -c` that builds an Assistant on the pre-built index and answers
             one question (measured inside, and from outside as process start -> exit).

Both ONNX sessions read the same model.onnx / tokenizer.json (Chroma's copy is laid out by
`provision_chroma_onnx_dir`, so nothing is downloaded).

    python bench/bench_compare.py [--repeat N] [--limit-papers N] [--questions N] [--cold-runs N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import (RESULTS, ROOT, clean_env, load_question_texts, loadavg, machine_info,  # noqa: E402
                      summary_ms, write_json)


def measure(fn):
    """(wall seconds, CPU seconds of this process, all threads, result). CPU time is far less
    sensitive than wall time to other processes competing for the 2 cores."""
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def best(runs: list[tuple[float, float]]) -> dict:
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    return {"wall_s": round(min(walls), 3), "cpu_s": round(min(cpus), 3),
            "wall_runs": [round(w, 2) for w in walls], "cpu_runs": [round(c, 2) for c in cpus]}


def langchain_adapter(ef):
    """The LangChain `Embeddings` a tutorial user writes around Chroma's default function."""
    from langchain_core.embeddings import Embeddings

    class ChromaDefaultEmbeddings(Embeddings):
        def embed_documents(self, texts):
            return [v.tolist() for v in ef(list(texts))]

        def embed_query(self, text):
            return ef([text])[0].tolist()

    return ChromaDefaultEmbeddings()


COLD_SNIPPET = r"""
import json, sys, time
t0 = time.time()
from rag import Assistant, Settings
from pathlib import Path
t1 = time.time()
a = Assistant(Settings(data_dir=Path(sys.argv[1]), mode="extractive"))
ans = a.ask(sys.argv[2])
t2 = time.time()
print(json.dumps({"import_s": t1 - t0, "first_answer_s": t2 - t1, "total_s": t2 - t0,
                  "timings_ms": ans.timings_ms, "abstained": ans.abstained, "chunks": a.store.chunks.count()}))
"""

# The same work split into its stages (model load, Chroma open, BM25 build, first ask).
COLD_BREAKDOWN = r"""
import json, sys, time
from pathlib import Path
T = {}
t = time.perf_counter()
from rag import Assistant, Settings
T["import_rag_s"] = time.perf_counter() - t
t = time.perf_counter()
import chromadb, onnxruntime, tokenizers, bm25s
T["import_deps_s"] = time.perf_counter() - t
s = Settings(data_dir=Path(sys.argv[1]), mode="extractive")
a = Assistant(s)
from rag.embeddings import get_embedder
t = time.perf_counter(); get_embedder(s); T["model_load_s"] = time.perf_counter() - t
t = time.perf_counter(); a.store; T["chroma_open_s"] = time.perf_counter() - t
t = time.perf_counter(); a.store.all_papers(); T["all_papers_s"] = time.perf_counter() - t
t = time.perf_counter(); a.retriever.lexical(); T["bm25_build_s"] = time.perf_counter() - t
t = time.perf_counter(); ans = a.ask(sys.argv[2]); T["first_ask_s"] = time.perf_counter() - t
t = time.perf_counter(); a.ask(sys.argv[2]); T["second_ask_s"] = time.perf_counter() - t
T["timings_ms"] = ans.timings_ms
print(json.dumps(T))
"""


def run_cold(data_dir: Path, question: str, runs: int, snapshot: Path | None = None) -> dict:
    """`runs` fresh processes on `data_dir`; with `snapshot`, each run gets its own copy of it
    (the index exactly as ingest left it: nothing persisted by a query yet)."""
    import shutil

    env = clean_env(PYTHONDONTWRITEBYTECODE="1")
    out: dict = {"runs": []}
    for _ in range(runs):
        if snapshot is not None:
            shutil.rmtree(data_dir, ignore_errors=True)
            shutil.copytree(snapshot, data_dir)
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", COLD_SNIPPET, str(data_dir), question], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
        outside = time.perf_counter() - t
        if p.returncode != 0:
            print(p.stderr[-3000:], file=sys.stderr)
            out["error"] = p.stderr[-1000:]
            break
        inside = json.loads(p.stdout.strip().splitlines()[-1])
        inside["outside_s"] = outside
        out["runs"].append(inside)
    if out["runs"]:
        for key in ("outside_s", "total_s", "first_answer_s", "import_s"):
            out[f"{key}_median"] = round(statistics.median(r[key] for r in out["runs"]), 3)
    if snapshot is not None:
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.copytree(snapshot, data_dir)
    p = subprocess.run([sys.executable, "-c", COLD_BREAKDOWN, str(data_dir), question], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    if p.returncode == 0:
        out["breakdown"] = {k: (round(v, 3) if isinstance(v, float) else v)
                            for k, v in json.loads(p.stdout.strip().splitlines()[-1]).items()}
    else:
        print(p.stderr[-3000:], file=sys.stderr)
    return out


def cold_only(args) -> None:
    import shutil

    from rag import Assistant, Settings
    from rag.corpus import load_bundled

    work = Path(tempfile.mkdtemp(prefix="bench-cold-"))
    papers = load_bundled()[: args.limit_papers or None]
    questions = load_question_texts(args.questions or None)
    print(f"machine load {loadavg()}; ingesting {len(papers)} papers into a fresh dir", flush=True)
    data = work / "index"
    Assistant(Settings(data_dir=data, mode="extractive")).ingest(papers=papers)
    snapshot = work / "snapshot"
    shutil.copytree(data, snapshot)
    first = run_cold(work / "cold-first", questions[0], args.cold_runs, snapshot=snapshot)
    # restart: a process that asked every question first, so whatever the product persists is on disk
    subprocess.run([sys.executable, "-c", "import sys\nfrom pathlib import Path\nfrom rag import Assistant, Settings\n"
                    "a = Assistant(Settings(data_dir=Path(sys.argv[1]), mode='extractive'))\n"
                    "[a.ask(q) for q in sys.argv[2:]]", str(data), *questions], cwd=ROOT, env=clean_env(), check=True)
    restart = run_cold(data, questions[0], args.cold_runs)
    out = json.loads(args.json.read_text()) if args.json.exists() else {}
    out["cold_start"] = {"first": first, "restart": restart, "machine": machine_info(), "loadavg_at_end": loadavg()}
    out.setdefault("ratios", {}).update(cold_start_first_s=first.get("outside_s_median"),
                                        cold_start_restart_s=restart.get("outside_s_median"))
    for kind, c in out["cold_start"].items():
        if isinstance(c, dict) and c.get("runs"):
            print(f"[cold/{kind}]  process start -> first answer: outside {c['outside_s_median']:.2f}s (median of "
                  f"{len(c['runs'])}), inside {c['total_s_median']:.2f}s (import {c['import_s_median']:.2f}s "
                  f"+ first answer {c['first_answer_s_median']:.2f}s)")
            print(f"[cold/{kind}]  breakdown: { {k: v for k, v in c.get('breakdown', {}).items() if k != 'timings_ms'} }")
    write_json(args.json, out)
    print(f"wrote {args.json}")
    shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of (floor, Chroma's function, plain recipe, our ingest), interleaved so that "
                         "load from other processes hits all four alike; the best round of each is kept")
    ap.add_argument("--limit-papers", type=int, default=0, help="use only the first N bundled papers (smoke runs)")
    ap.add_argument("--questions", type=int, default=0, help="0 = all of eval/questions.jsonl")
    ap.add_argument("--cold-runs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=RESULTS / "compare.json")
    ap.add_argument("--cold-only", action="store_true",
                    help="only the cold start (ingest the bundled corpus, then fresh processes); merged into --json")
    args = ap.parse_args()
    if args.cold_only:
        cold_only(args)
        return

    import numpy as np
    from langchain_core.documents import Document

    from chromadb.config import Settings as ChromaSettings
    from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2
    from langchain_chroma import Chroma
    from rag import Assistant, Settings
    from rag.chunking import Chunker
    from rag.corpus import load_bundled
    from rag.embeddings import MAX_TOKENS, get_embedder, provision_chroma_onnx_dir

    info = machine_info()
    print(f"machine: {info['cpus']} cpus, load average {info['loadavg_at_start']} (other processes may be running)")
    papers = load_bundled()
    if args.limit_papers:
        papers = papers[: args.limit_papers]
    questions = load_question_texts(args.questions or None)
    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    results: dict = {"machine": info, "args": vars(args) | {"json": str(args.json)}}

    # --- the texts: exactly what ingest embeds ------------------------------------------------
    base_settings = Settings(data_dir=work / "ours-probe", mode="extractive")
    t = time.perf_counter()
    ours_ef = get_embedder(base_settings)  # the same object every Assistant below uses (cached per config)
    load_ours_s = time.perf_counter() - t
    chunker = Chunker(base_settings.chunk_tokens, base_settings.tiktoken_encoding, cache_dir=work / "chunker-cache",
                      max_model_tokens=MAX_TOKENS, count_model_tokens=ours_ef.count_tokens)
    t = time.perf_counter()
    chunks = chunker.chunk_papers(papers)
    chunk_s = time.perf_counter() - t
    texts = [c.embed_text for c in chunks]
    lengths = [ours_ef.count_tokens(x) for x in texts]
    n_tokens = sum(lengths)
    print(f"corpus: {len(papers)} papers -> {len(texts)} chunks, {n_tokens} wordpieces "
          f"(mean {n_tokens / len(texts):.0f}/chunk, max {max(lengths)}; chunking took {chunk_s:.2f}s)")
    results["corpus"] = {"papers": len(papers), "chunks": len(texts), "wordpiece_tokens": n_tokens,
                         "mean_tokens_per_chunk": round(n_tokens / len(texts), 1), "max_tokens": max(lengths),
                         "chunks_over_256": sum(n > MAX_TOKENS for n in lengths), "chunking_s": round(chunk_s, 3)}

    # Chroma's own function on the same files (laid out locally, so it never downloads).
    ONNXMiniLM_L6_V2.DOWNLOAD_PATH = str(provision_chroma_onnx_dir(work / "chroma-onnx"))
    chroma_ef = ONNXMiniLM_L6_V2(preferred_providers=["CPUExecutionProvider"])
    t = time.perf_counter()
    chroma_ef(["warm-up"])  # loads tokenizer + session
    load_chroma_s = time.perf_counter() - t
    ours_ef.embed(texts[:32])  # warm-up
    chroma_ef(texts[:32])
    docs = [Document(page_content=c.embed_text, metadata={"paper_id": c.paper_id, "index": c.index}) for c in chunks]
    lc_emb = langchain_adapter(chroma_ef)

    runs: dict[str, list[tuple[float, float]]] = {"floor": [], "chroma_onnx": [], "plain": [], "ours": []}
    ours_vecs = chroma_vecs = db = assistant = report = settings = None
    for i in range(args.repeat):
        print(f"-- round {i + 1}/{args.repeat}  load {loadavg()}", flush=True)
        w, c, ours_vecs = measure(lambda: ours_ef.embed(texts))
        runs["floor"].append((w, c))
        print(f"   floor, our ONNX (dynamic padding): {w:6.2f}s wall {c:6.2f}s cpu  {len(texts) / w:6.1f} texts/s "
              f"{n_tokens / w:6.0f} tokens/s", flush=True)
        w, c, chroma_vecs = measure(lambda: chroma_ef(texts))
        runs["chroma_onnx"].append((w, c))
        print(f"   Chroma ONNXMiniLM_L6_V2 (pad 256):  {w:6.2f}s wall {c:6.2f}s cpu  {len(texts) / w:6.1f} texts/s "
              f"{n_tokens / w:6.0f} tokens/s", flush=True)
        # anonymized_telemetry=False only keeps the offline run from trying to phone home.
        w, c, db = measure(lambda: Chroma.from_documents(
            docs, embedding=lc_emb, persist_directory=str(work / f"plain{i}"),
            client_settings=ChromaSettings(anonymized_telemetry=False)))
        runs["plain"].append((w, c))
        print(f"   plain recipe, Chroma.from_documents: {w:6.2f}s wall {c:6.2f}s cpu", flush=True)
        settings = Settings(data_dir=work / f"ours{i}", mode="extractive")  # fresh index + embedding cache
        assistant = Assistant(settings)
        w, c, (report, _) = measure(lambda: assistant.ingest(papers=papers))
        runs["ours"].append((w, c))
        print(f"   ours, Assistant.ingest:            {w:6.2f}s wall {c:6.2f}s cpu  ({report.summary()})", flush=True)
    import shutil

    snapshot = work / "ours-snapshot"  # the last index as ingest left it, for the first-ever cold start
    shutil.copytree(settings.data_dir, snapshot)

    floor, chroma, plain, ours = (best(runs[k]) for k in ("floor", "chroma_onnx", "plain", "ours"))
    cos = np.sum(ours_vecs * np.asarray(chroma_vecs, dtype=np.float32), axis=1)
    results["floor"] = {
        "ours": floor | {"texts_per_s": round(len(texts) / floor["wall_s"], 1),
                         "tokens_per_s": round(n_tokens / floor["wall_s"]), "model_load_s": round(load_ours_s, 3)},
        "chroma_onnx": chroma | {"texts_per_s": round(len(texts) / chroma["wall_s"], 1),
                                 "tokens_per_s": round(n_tokens / chroma["wall_s"]),
                                 "padded_tokens_per_s": round(len(texts) * 256 / chroma["wall_s"]),
                                 "model_load_s": round(load_chroma_s, 3)},
        "vector_agreement_cos": {"min": round(float(cos.min()), 5), "mean": round(float(cos.mean()), 5)},
    }
    results["plain_recipe"] = plain | {"papers_per_s": round(len(papers) / plain["wall_s"], 2),
                                       "chunks_per_s": round(len(texts) / plain["wall_s"], 1),
                                       "note": "documents are pre-chunked (chunking time not included)"}
    results["ours"] = ours | {"papers_per_s": round(len(papers) / ours["wall_s"], 2),
                              "chunks_per_s": round(report.chunks_embedded / ours["wall_s"], 1),
                              "chunks_embedded": report.chunks_embedded}
    print(f"[floor] ours:   {floor['wall_s']:6.2f}s  {len(texts) / floor['wall_s']:6.1f} texts/s  "
          f"{n_tokens / floor['wall_s']:6.0f} tokens/s  (cpu {floor['cpu_s']:.2f}s)")
    print(f"[floor] Chroma: {chroma['wall_s']:6.2f}s  {len(texts) / chroma['wall_s']:6.1f} texts/s  "
          f"{n_tokens / chroma['wall_s']:6.0f} real tokens/s, {len(texts) * 256 / chroma['wall_s']:.0f} padded  "
          f"(cpu {chroma['cpu_s']:.2f}s); vectors agree: mean cos {cos.mean():.4f}, min {cos.min():.4f}")
    print(f"[plain] ingest: {plain['wall_s']:6.2f}s  {len(papers) / plain['wall_s']:6.1f} papers/s  (cpu {plain['cpu_s']:.2f}s)")
    print(f"[ours]  ingest: {ours['wall_s']:6.2f}s  {len(papers) / ours['wall_s']:6.1f} papers/s  (cpu {ours['cpu_s']:.2f}s)")

    # --- queries ------------------------------------------------------------------------------
    db.similarity_search(questions[0], k=5)  # warm-up
    plain_q = []
    for q in questions:
        t = time.perf_counter()
        db.similarity_search(q, k=5)
        plain_q.append((time.perf_counter() - t) * 1000)
    print(f"[plain] similarity_search(k=5): {summary_ms(plain_q)}")
    results["plain_recipe"]["query_ms"] = summary_ms(plain_q)
    del db

    t = time.perf_counter()
    again, _ = assistant.ingest(papers=papers)
    reingest_s = time.perf_counter() - t
    t = time.perf_counter()
    first = assistant.ask(questions[0])  # builds BM25, opens everything
    first_ask_ms = (time.perf_counter() - t) * 1000
    retrieve_ms, ask_ms, ask_warm_ms = [], [], []
    stages: dict[str, list[float]] = {}
    for q in questions:
        t = time.perf_counter()
        assistant.retrieve(q)
        retrieve_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        ans = assistant.ask(q)
        ask_ms.append((time.perf_counter() - t) * 1000)
        for k, v in ans.timings_ms.items():
            stages.setdefault(k, []).append(v)
    for q in questions:  # second pass: the extractive sentence-vector cache is warm
        t = time.perf_counter()
        assistant.ask(q)
        ask_warm_ms.append((time.perf_counter() - t) * 1000)
    stage_p50 = {k: round(statistics.median(v), 1) for k, v in stages.items()}
    print(f"[ours]  retrieve:                    {summary_ms(retrieve_ms)}")
    print(f"[ours]  ask, extractive (1st pass):  {summary_ms(ask_ms)}")
    print(f"[ours]  ask (2nd pass, warm sentence cache): {summary_ms(ask_warm_ms)}")
    print(f"[ours]  ask stages p50 (ms): {stage_p50}")
    results["ours"].update({
        "reingest_unchanged_s": round(reingest_s, 3), "reingest_embedded": again.chunks_embedded,
        "first_ask_ms": round(first_ask_ms, 1),
        "first_ask_timings_ms": {k: round(v, 1) for k, v in first.timings_ms.items()},
        "retrieve_ms": summary_ms(retrieve_ms), "ask_ms": summary_ms(ask_ms), "ask_warm_ms": summary_ms(ask_warm_ms),
        "ask_stage_p50_ms": stage_p50, "questions": len(questions),
    })

    # --- cold start -----------------------------------------------------------------------------
    # "first": a new process on the index exactly as ingest left it (a copy per run): BM25 not yet
    # persisted, no sentence vector cached. "restart": a new process on the index the questions above
    # ran on (whatever the product persisted on disk is reused).
    del assistant
    cold = {"first": run_cold(work / "cold-first", questions[0], args.cold_runs, snapshot=snapshot),
            "restart": run_cold(settings.data_dir, questions[0], args.cold_runs)}
    results["cold_start"] = cold
    for kind, c in cold.items():
        if c.get("runs"):
            print(f"[cold/{kind}]  process start -> first answer: outside {c['outside_s_median']:.2f}s (median of "
                  f"{len(c['runs'])}), inside {c['total_s_median']:.2f}s (import {c['import_s_median']:.2f}s "
                  f"+ first answer {c['first_answer_s_median']:.2f}s)")
        if "breakdown" in c:
            print(f"[cold/{kind}]  breakdown: { {k: v for k, v in c['breakdown'].items() if k != 'timings_ms'} }")

    # --- ratios -----------------------------------------------------------------------------------
    r50 = statistics.median(retrieve_ms)
    ratios = {
        "ingest_vs_floor": round(floor["wall_s"] / ours["wall_s"], 2),
        "ingest_vs_floor_cpu": round(floor["cpu_s"] / ours["cpu_s"], 2),
        "ingest_vs_plain_recipe": round(plain["wall_s"] / ours["wall_s"], 2),
        "ingest_vs_plain_recipe_cpu": round(plain["cpu_s"] / ours["cpu_s"], 2),
        "floor_vs_chroma_onnx": round(chroma["wall_s"] / floor["wall_s"], 2),
        "retrieve_p50_vs_plain_query_p50": round(r50 / statistics.median(plain_q), 2),
        "ask_p50_vs_plain_query_p50": round(statistics.median(ask_ms) / statistics.median(plain_q), 2),
        "cold_start_first_s": cold["first"].get("outside_s_median"),
        "cold_start_restart_s": cold["restart"].get("outside_s_median"),
    }
    results["ratios"] = ratios
    results["targets"] = {
        "ingest >= 0.9x floor": ratios["ingest_vs_floor"] >= 0.9,
        "ingest >= 1.3x plain recipe": ratios["ingest_vs_plain_recipe"] >= 1.3,
        "retrieve p50 <= 25 ms (bundled)": r50 <= 25,
    }
    results["loadavg_at_end"] = loadavg()
    print("\nratios (throughput: > 1 means ours is faster; latency: < 1 means ours is faster)")
    print(f"  our ingest / floor:                 {ratios['ingest_vs_floor']}x wall, "
          f"{ratios['ingest_vs_floor_cpu']}x cpu   (target >= 0.9)")
    print(f"  our ingest / plain recipe:          {ratios['ingest_vs_plain_recipe']}x wall, "
          f"{ratios['ingest_vs_plain_recipe_cpu']}x cpu   (target >= 1.3)")
    print(f"  floor / Chroma's ONNX function:     {ratios['floor_vs_chroma_onnx']}x")
    print(f"  our retrieve p50 / plain query p50: {ratios['retrieve_p50_vs_plain_query_p50']}")
    print(f"  our ask p50 / plain query p50:      {ratios['ask_p50_vs_plain_query_p50']}")
    print(f"  cold start, process start -> first answer (outside, median): first after ingest "
          f"{ratios['cold_start_first_s']} s, restart {ratios['cold_start_restart_s']} s")
    print(f"  targets: {results['targets']}   load at end {results['loadavg_at_end']}")
    write_json(args.json, results)
    print(f"wrote {args.json}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
