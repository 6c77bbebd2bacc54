"""A start that imports only what the command needs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

FORBIDDEN = {"gradio", "matplotlib", "langchain_openai", "llama_cpp", "fastapi", "uvicorn", "langchain"}

PROBE = r"""
import contextlib, io, json, sys, threading
from rag.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "out": out.getvalue(), "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _run(args: list[str], data_dir) -> dict:
    env = {**os.environ, "RAG_DATA_DIR": str(data_dir)}
    p = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_rag_ask_imports_no_ui_plotting_llm_or_local_model(index_copy):
    got = _run(["ask", "What accuracy does FaceNet reach on LFW?"], index_copy)
    assert got["code"] == 0 and "99.63%" in got["out"]
    assert not FORBIDDEN & set(got["modules"]), FORBIDDEN & set(got["modules"])
    assert "langchain_core" not in got["modules"]  # the extractive mode needs no LangChain at all


def test_rag_papers_does_not_load_the_model(index_copy):
    got = _run(["papers", "--search", "facenet"], index_copy)
    assert got["code"] == 0 and "facenet-a-unified-embedding-for-face-recognition" in got["out"]
    assert not FORBIDDEN & set(got["modules"])
    assert "onnxruntime" not in got["modules"]  # listing papers embeds nothing
