"""A small bounded load on the UI's API: no request may fail. (Figures: bench/load_ui.py.)"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.slow
def test_concurrent_api_requests_all_succeed(assistant):
    from load_ui import run_load
    from rag.ui import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(assistant)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        questions = ["Which method clusters faces by building clean graphs for GCNs?",
                     "What accuracy does FaceNet reach on LFW?",
                     "Which papers address face anti-spoofing?",
                     "Which paper performs gait recognition from walking silhouettes?"]
        result = run_load(f"http://127.0.0.1:{port}/", questions, requests=60, concurrency=10)
    finally:
        app.close()
    assert result["errors"] == 0, result["error_samples"]
    assert result["requests"] == 60
