"""Shared fixtures: no network, every data dir in a temp folder, one real index per session."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SEED_FILE = SHARED / "seeds" / "000_9639033de7026021.txt"
PUBMEDQA = SHARED / "datasets" / "pubmedqa" / "ori_pqal.json"

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self, address):
    if not _is_local(address):
        raise OSError(f"network access blocked in tests: {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if not _is_local(address):
        raise OSError(f"network access blocked in tests: {address!r}")
    return _real_connect_ex(self, address)


def pytest_configure(config):
    socket.socket.connect = _guarded_connect
    socket.socket.connect_ex = _guarded_connect_ex


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """Every test gets its own data dir and no LLM configuration from the caller's shell."""
    for var in list(os.environ):
        if var.startswith("RAG_") or var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    yield


@pytest.fixture(scope="session")
def built_index(tmp_path_factory) -> Path:
    """The bundled corpus indexed once per session; tests copy it before writing."""
    from rag.settings import Settings
    from rag.store import PaperStore
    from rag.corpus import load_bundled

    data = tmp_path_factory.mktemp("bundled-index")
    store = PaperStore(Settings(data_dir=data))
    store.ingest(load_bundled())
    return data


@pytest.fixture
def index_copy(built_index, tmp_path) -> Path:
    """A writable copy of the bundled index."""
    dest = tmp_path / "index-copy"
    shutil.copytree(built_index, dest)
    return dest


@pytest.fixture(scope="session")
def assistant(built_index):
    """A read-only assistant over the shared bundled index (offline extractive mode)."""
    from rag import Assistant, Settings

    return Assistant(Settings(data_dir=built_index, mode="extractive"))


# --- helpers for tests that start servers on loopback -----------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, proc=None, timeout: float = 120, log: Path | None = None) -> None:
    """Poll `url` until it answers; fail early (with the log's tail) if `proc` exits."""
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
                raise RuntimeError(f"server exited with {proc.returncode} before answering {url}\n{tail}")
            if time.time() > deadline:
                raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")
            time.sleep(0.3)


@contextmanager
def background_server(cmd: list[str], ready_url: str, log: Path, timeout: float = 120):
    """Run a server process (output to `log`: a pipe would fill and stall it) until
    `ready_url` answers; terminate it on exit."""
    import subprocess

    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_http(ready_url, proc, timeout=timeout, log=log)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def chunker(tmp_path_factory):
    """One real chunker per module, with the real wordpiece counter as the window guard."""
    from rag.chunking import Chunker
    from rag.embeddings import MAX_TOKENS, get_embedder
    from rag.settings import Settings

    counter = get_embedder(Settings()).count_tokens
    return Chunker(64, "cl100k_base", cache_dir=tmp_path_factory.mktemp("chunk-cache"),
                   max_model_tokens=MAX_TOKENS, count_model_tokens=counter)


@contextmanager
def serve_app(assistant):
    """The Gradio app for `assistant` on a free 127.0.0.1 port; yields its base URL."""
    from rag.ui import create_app

    app = create_app(assistant)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        app.close()


@contextmanager
def serve_api(assistant, log_level: str = "warning"):
    """The OpenAI-compatible API (rag/api.py) for `assistant` under uvicorn on a free
    127.0.0.1 port, in a background thread; yields its base URL (without /v1)."""
    import threading

    import uvicorn

    from rag.api import create_api

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_api(assistant), host="127.0.0.1", port=port,
                                           log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
# --- synthetic corpora for concurrency tests ----------------------------------------------

_SYLLABLES = ["ka", "zo", "ri", "mu", "te", "vo", "la", "shi", "pen", "dra", "qui", "lo", "bex", "nor", "fia",
              "gul", "tam", "wes", "yor", "ump"]
_TASKS = ["face parsing", "gait recognition", "crowd counting", "pose transfer", "iris matching", "lip reading",
          "age estimation", "hand tracking"]


def synthetic_papers(n: int, tag: str, seed: int) -> list[dict]:
    """n short, distinct papers without ids (one or two short sentences each, so embedding
    is cheap); two made-up words name each method, so its title finds it."""
    import random

    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[dict] = []
    while len(out) < n:
        a = "".join(rng.choice(_SYLLABLES) for _ in range(3))
        b = "".join(rng.choice(_SYLLABLES) for _ in range(3))
        if a in seen or b in seen or a == b:
            continue
        seen.update((a, b))
        i, task = len(out), rng.choice(_TASKS)
        out.append({"title": f"{a.capitalize()} {b.capitalize()} {tag}{i} for {task}",
                    "abstract": f"We present {a} {b}, a small model for {task}. "
                                f"It scores {rng.randint(50, 99)}.{rng.randint(0, 9)} on {tag}-bench {i}."})
    return out


def write_jsonl_rows(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
