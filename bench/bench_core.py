"""Core benchmark on the bundled corpus: prints figures, asserts nothing.

In one process: the raw embedding model on exactly the texts ingest embeds (the floor),
then a cold ingest into a fresh index, a re-ingest, and `ask` latency (extractive).
Ratios against the floor are what to compare across machines.

    python bench/bench_core.py [--questions N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q / 100 * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--questions", type=int, default=60)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from rag import Assistant, Settings
    from rag.corpus import load_bundled
    from rag.embeddings import get_embedder
    from rag.eval import load_questions

    papers = load_bundled()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), mode="extractive")
        t = time.perf_counter()
        embedder = get_embedder(settings)
        load_s = time.perf_counter() - t
        assistant = Assistant(settings)
        chunks = assistant.store.chunker.chunk_papers(papers)
        texts = [c.embed_text for c in chunks]
        n_tokens = sum(embedder.count_tokens(x) for x in texts)

        embedder.embed(texts[:32])  # warm-up
        t, c = time.perf_counter(), time.process_time()
        embedder.embed(texts)
        floor_s, floor_cpu_s = time.perf_counter() - t, time.process_time() - c

        t, c = time.perf_counter(), time.process_time()
        report = assistant.store.ingest(papers)
        ingest_s, ingest_cpu_s = time.perf_counter() - t, time.process_time() - c
        t = time.perf_counter()
        again = assistant.store.ingest(papers)
        reingest_s = time.perf_counter() - t

        questions = [q.question for q in load_questions(ROOT / "eval" / "questions.jsonl")][: args.questions]
        assistant.ask(questions[0])  # builds the lexical index once
        ask_ms, retrieve_ms = [], []
        for q in questions:
            t = time.perf_counter()
            assistant.retrieve(q)
            retrieve_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            assistant.ask(q)
            ask_ms.append((time.perf_counter() - t) * 1000)

    figures = {
        "papers": len(papers), "chunks": len(chunks), "wordpiece_tokens": n_tokens,
        "model_load_s": round(load_s, 2),
        "floor_s": round(floor_s, 2), "floor_papers_per_s": round(len(papers) / floor_s, 1),
        "floor_tokens_per_s": round(n_tokens / floor_s),
        "ingest_s": round(ingest_s, 2), "ingest_papers_per_s": round(len(papers) / ingest_s, 1),
        "ingest_vs_floor": round(floor_s / ingest_s, 2),
        # CPU time of the whole process (all threads): less sensitive to other work on the machine
        "floor_cpu_s": round(floor_cpu_s, 2), "ingest_cpu_s": round(ingest_cpu_s, 2),
        "ingest_vs_floor_cpu": round(floor_cpu_s / ingest_cpu_s, 2),
        "loadavg": [round(x, 2) for x in __import__("os").getloadavg()],
        "chunks_embedded": report.chunks_embedded,
        "reingest_s": round(reingest_s, 3), "reingest_embedded": again.chunks_embedded,
        "retrieve_ms_p50": round(statistics.median(retrieve_ms), 1), "retrieve_ms_p95": round(pct(retrieve_ms, 95), 1),
        "ask_ms_p50": round(statistics.median(ask_ms), 1), "ask_ms_p95": round(pct(ask_ms, 95), 1),
        "questions": len(questions),
    }
    print(f"corpus: {len(papers)} papers -> {len(chunks)} chunks, {n_tokens} wordpiece tokens")
    print(f"floor (raw ONNX model, dynamic padding, same texts): {floor_s:.2f}s = "
          f"{figures['floor_papers_per_s']} papers/s, {figures['floor_tokens_per_s']} tokens/s")
    print(f"ingest (chunk + embed + Chroma writes):             {ingest_s:.2f}s = "
          f"{figures['ingest_papers_per_s']} papers/s  -> {figures['ingest_vs_floor']}x the floor "
          f"(CPU time: floor {floor_cpu_s:.1f}s, ingest {ingest_cpu_s:.1f}s -> {figures['ingest_vs_floor_cpu']}x; "
          f"load {figures['loadavg']})")
    print(f"re-ingest unchanged corpus: {reingest_s * 1000:.0f} ms, {again.chunks_embedded} chunks embedded")
    print(f"retrieve ({len(questions)} questions): p50 {figures['retrieve_ms_p50']} ms, p95 {figures['retrieve_ms_p95']} ms")
    print(f"ask, extractive:             p50 {figures['ask_ms_p50']} ms, p95 {figures['ask_ms_p95']} ms")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
