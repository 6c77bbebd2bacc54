"""A small bounded load on the UI's API: no request may fail. (Figures: bench/load_ui.py.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import serve_app

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


@pytest.mark.slow
def test_concurrent_api_requests_all_succeed(assistant):
    from load_ui import run_load

    with serve_app(assistant) as url:
        questions = ["Which method clusters faces by building clean graphs for GCNs?",
                     "What accuracy does FaceNet reach on LFW?",
                     "Which papers address face anti-spoofing?",
                     "Which paper performs gait recognition from walking silhouettes?"]
        result = run_load(url, questions, requests=60, concurrency=10)
    assert result["errors"] == 0, result["error_samples"]
    assert result["requests"] == 60
