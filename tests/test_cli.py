"""The `rag` command, run as a user would (a subprocess against a copied index)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


RAG = [sys.executable, "-m", "rag.cli"]


def run(args, data_dir: Path, **env):
    full_env = {**os.environ, "RAG_DATA_DIR": str(data_dir), **env}
    return subprocess.run(RAG + args, capture_output=True, text=True, env=full_env, timeout=300)


def test_import_of_cli_is_light():
    code = ("import sys, rag.cli; heavy = [m for m in ('chromadb', 'onnxruntime', 'langchain_core', 'gradio', "
            "'numpy', 'openai') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_commands(tmp_path):
    out = run(["--help"], tmp_path)
    assert out.returncode == 0
    for cmd in ("ingest", "ask", "papers", "eval", "serve"):
        assert cmd in out.stdout


def test_ask_json_schema(index_copy):
    out = run(["ask", "--json", "--k", "4", "Which paper clusters faces by building clean graphs for GCNs?"], index_copy)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert set(data) >= {"question", "answer", "mode", "abstained", "citations", "retrieved", "timings_ms"}
    assert data["mode"] == "extractive" and not data["abstained"]
    assert len(data["retrieved"]) == 4
    cite = data["citations"][0]
    assert set(cite) >= {"n", "paper_id", "title", "score", "snippet"}
    assert cite["paper_id"] == "ada-nets-face-clustering-via-adaptive-neighbour"
    assert f"[{cite['n']}]" in data["answer"]


def test_ask_prints_answer_and_sources(index_copy):
    out = run(["ask", "What accuracy does FaceNet reach on LFW?"], index_copy)
    assert out.returncode == 0, out.stderr
    assert "99.63%" in out.stdout and "Sources:" in out.stdout and "FaceNet" in out.stdout


def test_ask_restricted_to_a_paper(index_copy):
    out = run(["ask", "--json", "--paper", "facenet-a-unified-embedding-for-face-recognition", "What loss is used?"],
              index_copy)
    data = json.loads(out.stdout)
    assert [r["paper_id"] for r in data["retrieved"]] == ["facenet-a-unified-embedding-for-face-recognition"]


def test_empty_question_is_a_friendly_error(index_copy):
    out = run(["ask", "   "], index_copy)
    assert out.returncode == 2
    assert "error: the question is empty" in out.stderr and "Traceback" not in out.stderr


def test_papers_search(index_copy):
    out = run(["papers", "--search", "anti-spoofing"], index_copy)
    assert out.returncode == 0
    assert "a-closer-look-at-geometric-temporal-dynamics-for" in out.stdout


def test_ingest_bad_file_names_line_and_keeps_index(index_copy, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "Fine", "abstract": "A fine abstract about faces."}\n'
                   '{"title": "No abstract"}\n{not json\n', encoding="utf-8")
    out = run(["ingest", str(bad)], index_copy)
    assert out.returncode == 2
    assert "bad.jsonl, line 2, field 'abstract'" in out.stderr
    assert "bad.jsonl, line 3" in out.stderr and "invalid JSON" in out.stderr
    listing = run(["papers"], index_copy)
    assert "119 paper(s)" in listing.stdout


def test_ingest_user_corpus_then_ask(index_copy, tmp_path):
    csv_file = tmp_path / "mine.csv"
    csv_file.write_text("title,abstract,year\n"
                        "Zebra Stripe Counting,We count zebra stripes with a tiny quokka network and reach 97.5% accuracy.,2024\n",
                        encoding="utf-8")
    out = run(["ingest", str(csv_file)], index_copy)
    assert out.returncode == 0, out.stderr
    assert "1 added" in out.stdout
    again = run(["ingest", str(csv_file)], index_copy)
    assert "0 added" in again.stdout and "1 unchanged" in again.stdout and "0 chunks embedded" in again.stdout
    ans = json.loads(run(["ask", "--json", "How accurate is the zebra stripe counting network?"], index_copy).stdout)
    assert ans["citations"] and ans["citations"][0]["paper_id"] == "zebra-stripe-counting", ans
    assert "97.5%" in ans["answer"]


def test_openai_mode_without_configuration_explains(index_copy):
    out = run(["ask", "--mode", "openai", "Which paper clusters faces?"], index_copy)
    assert out.returncode == 2 and "OPENAI_API_KEY" in out.stderr
