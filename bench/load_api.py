"""Bounded loopback load test of the OpenAI-compatible API (`/v1/chat/completions`, extractive).

Starts `rag.api` under uvicorn on a free 127.0.0.1 port over an index (built in a temp
folder, or `--data-dir` to reuse one), sends N chat completions with C in flight over
httpx, and prints errors, throughput and latency percentiles. Traffic never leaves the
machine; the loop is bounded in count.

    python bench/load_api.py [--requests 200] [--concurrency 20] [--stream] [--data-dir DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _one(client, url: str, question: str, stream: bool) -> str | None:
    """One chat completion; None if fine, else what went wrong."""
    body = {"model": "paper-rag", "messages": [{"role": "user", "content": question}], "stream": stream}
    if not stream:
        resp = client.post(f"{url}/chat/completions", json=body)
        if resp.status_code != 200:
            return f"HTTP {resp.status_code}: {resp.text[:120]}"
        data = resp.json()
        if not data.get("choices") or "citations" not in data:
            return f"bad payload: {resp.text[:120]}"
        return None
    with client.stream("POST", f"{url}/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            return f"HTTP {resp.status_code}: {resp.read()[:120]!r}"
        lines = [line for line in resp.iter_lines() if line.startswith("data: ")]
    if not lines or lines[-1] != "data: [DONE]" or "citations" not in lines[-2]:
        return f"bad stream: {lines[-2:] if lines else 'empty'}"
    return None


def run_load(url: str, questions: list[str], requests: int, concurrency: int, stream: bool = False,
             api_key: str = "load-test") -> dict:
    """`url` is the API's base URL ending in /v1."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(timeout=300, limits=limits, headers={"Authorization": f"Bearer {api_key}"}) as client:
        def one(i: int) -> None:
            t = time.perf_counter()
            try:
                problem = _one(client, url, questions[i % len(questions)], stream)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                problem = f"{type(exc).__name__}: {exc}"[:200]
            if problem:
                errors.append(problem)
            latencies.append((time.perf_counter() - t) * 1000)

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            list(pool.map(one, range(requests)))
        wall = time.perf_counter() - start
    lat = sorted(latencies)
    return {"requests": requests, "concurrency": concurrency, "stream": stream, "errors": len(errors),
            "error_samples": errors[:5], "wall_s": round(wall, 2), "throughput_rps": round(requests / wall, 2),
            "p50_ms": round(statistics.median(lat), 1), "p95_ms": round(lat[int(0.95 * (len(lat) - 1))], 1),
            "max_ms": round(lat[-1], 1)}


@contextmanager
def api_server(assistant):
    """The API for `assistant` under uvicorn in a thread on a free loopback port; yields .../v1."""
    import uvicorn

    from rag.api import create_api

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_api(assistant), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
            break
        except OSError:
            if time.time() > deadline:
                raise RuntimeError("the API did not start within 120 s") from None
            time.sleep(0.2)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--stream", action="store_true", help="streamed completions (SSE) instead of plain ones")
    ap.add_argument("--data-dir", type=Path, help="an existing index to serve (default: build one in a temp dir)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from rag import Assistant, Settings
    from rag.eval import load_questions

    with tempfile.TemporaryDirectory() as tmp:
        assistant = Assistant(Settings(data_dir=args.data_dir or Path(tmp), mode="extractive"))
        assistant.ensure_index()
        questions = [q.question for q in load_questions(ROOT / "eval" / "questions.jsonl")]
        for q in questions:  # warm the caches, as a running server would be
            assistant.ask(q)
        with api_server(assistant) as url:
            result = run_load(url, questions, args.requests, args.concurrency, stream=args.stream)
    print(f"{result['requests']} requests{' (streamed)' if args.stream else ''}, {result['concurrency']} in flight: "
          f"{result['errors']} errors, {result['throughput_rps']} req/s, p50 {result['p50_ms']} ms, "
          f"p95 {result['p95_ms']} ms, max {result['max_ms']} ms")
    for e in result["error_samples"]:
        print("  error:", e)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
