"""The `rag` command, run as a user would (a subprocess against a copied index)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


RAG = [sys.executable, "-m", "rag.cli"]
ROOT = Path(__file__).resolve().parents[1]


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


EXIT_PROBE = ("import atexit, sys; atexit.register(lambda: print('normal exit', file=sys.stderr)); "
              "sys.argv = ['rag', *sys.argv[1:]]; from rag.cli import run; run()")


@pytest.mark.slow
def test_a_command_that_wrote_exits_normally_and_a_read_only_one_at_once(tmp_path):
    # The first `rag ask` in a new data dir indexes the bundled corpus: it wrote, so the
    # interpreter shuts down normally. The next one only reads: os._exit once its output is
    # flushed (no atexit handler runs), and the output is whole and the index complete.
    data = tmp_path / "fresh"
    env = {**os.environ, "RAG_DATA_DIR": str(data)}
    probe = [sys.executable, "-c", EXIT_PROBE]
    first = subprocess.run(probe + ["ask", "What accuracy does FaceNet reach on LFW?"], capture_output=True,
                           text=True, env=env, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "normal exit" in first.stderr and "99.63%" in first.stdout
    second = subprocess.run(probe + ["ask", "--json", "--k", "8", "Which papers study face recognition?"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "normal exit" not in second.stderr
    assert len(json.loads(second.stdout)["retrieved"]) == 8  # the whole JSON arrived
    papers = subprocess.run(probe + ["papers", "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert "normal exit" not in papers.stderr
    assert len(json.loads(papers.stdout)) == 119


@pytest.mark.parametrize("argv", [["papers"], pytest.param(["ask", "What accuracy does FaceNet reach on LFW?"],
                                                           marks=pytest.mark.slow)])
def test_a_reader_that_goes_away_is_not_an_error(index_copy, argv):
    # `rag papers | head -1`: the pipe is closed before the command writes.
    proc = subprocess.Popen(RAG + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAG_DATA_DIR": str(index_copy)})
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err
    assert "error" not in err.lower() and "Traceback" not in err, err


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
    from rag.corpus import generated_id

    assert ans["citations"] and ans["citations"][0]["paper_id"] == generated_id("Zebra Stripe Counting"), ans
    assert "97.5%" in ans["answer"]


def test_openai_mode_without_configuration_explains(index_copy):
    out = run(["ask", "--mode", "openai", "Which paper clusters faces?"], index_copy)
    assert out.returncode == 2 and "OPENAI_API_KEY" in out.stderr


# --- every bad setting, flag or file: one clear error, never a traceback ------------------------------

def _fifo(tmp):
    os.mkfifo(tmp / "papers.jsonl")
    return str(tmp / "papers.jsonl")


def _loop(tmp):
    (tmp / "a.jsonl").symlink_to(tmp / "b.jsonl")
    (tmp / "b.jsonl").symlink_to(tmp / "a.jsonl")
    return str(tmp / "a.jsonl")


def _a_file(tmp):
    (tmp / "file").write_text("x")
    return str(tmp / "file")


def _one_paper(tmp):
    (tmp / "one.jsonl").write_text('{"title": "Zebra Gaits", "abstract": "We study zebra gaits."}\n')
    return str(tmp / "one.jsonl")


def _cap_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_DATA, (4 << 30, 4 << 30))


Q = "What accuracy does FaceNet reach on LFW?"
BAD = [
    # (environment, argv, what the error must name)
    ({"RAG_K": "abc"}, ["ask", Q], "RAG_K='abc'"),
    ({"RAG_K": "0"}, ["ask", Q], "RAG_K='0'"),
    ({"RAG_K": "-1"}, ["ask", Q], "RAG_K='-1'"),
    ({"RAG_K": "100000"}, ["ask", Q], "from 1 to 50"),
    ({"RAG_MODE": "bogus"}, ["ask", Q], "RAG_MODE='bogus': must be one of auto, extractive, openai, local"),
    ({"RAG_EMBEDDINGS": "bogus"}, ["ask", Q], "RAG_EMBEDDINGS"),
    ({"RAG_TEMPERATURE": "hot"}, ["ask", Q], "RAG_TEMPERATURE"),
    ({"RAG_FETCH_K": "1"}, ["ask", Q], "RAG_FETCH_K"),
    ({"RAG_DATA_DIR": ""}, ["ask", Q], "RAG_DATA_DIR='': must not be empty"),
    ({"RAG_CHROMA_URL": "ftp://nowhere"}, ["ask", Q], "RAG_CHROMA_URL"),
    ({"RAG_COLLECTION": "bad name!"}, ["ask", Q], "RAG_COLLECTION"),
    ({"RAG_UI_PORT": "99999"}, ["serve"], "RAG_UI_PORT='99999'"),
    ({"RAG_UI_PORT": "abc"}, ["serve"], "RAG_UI_PORT"),
    ({"RAG_MAX_UPLOAD_MB": "0"}, ["serve"], "RAG_MAX_UPLOAD_MB"),
    ({"RAG_TIKTOKEN_ENCODING": "nope"}, ["ingest", _one_paper], "RAG_TIKTOKEN_ENCODING='nope'"),
    ({}, ["ask", "--k", "-1", Q], "argument --k"),
    ({}, ["ask", "--k", "0", Q], "argument --k"),  # used to mean "the default"
    ({}, ["ask", "--k", "100000", Q], "argument --k"),
    ({}, ["ask", "--k", "abc", Q], "argument --k"),
    ({}, ["serve", "--port", "99999"], "argument --port"),
    ({}, ["serve", "--port", "-1"], "argument --port"),
    ({}, ["eval", "--concurrency", "0"], "argument --concurrency"),
    ({}, ["--data-dir", "", "ask", Q], "argument --data-dir"),
    ({}, ["--data-dir", _a_file, "ask", Q], "is a file"),
    ({"RAG_DATA_DIR": "/proc/paper-rag-test"}, ["ask", Q], "cannot be created"),
    ({}, ["ingest", _fifo], "is a FIFO"),
    ({}, ["ingest", "/dev/zero"], "is a character device"),
    ({}, ["ingest", _loop], "symlink loop"),
    ({}, ["serve", "--host", "256.1.1.1"], "cannot serve on host '256.1.1.1'"),
]


@pytest.mark.parametrize("env, argv, named", BAD, ids=[" ".join(str(a) if isinstance(a, str) else a.__name__
                                                               for a in argv) + " " + " ".join(f"{k}={v}" for k, v in e.items())
                                                      for e, argv, _ in BAD])
def test_bad_settings_flags_and_files_are_one_clear_error(tmp_path, env, argv, named):
    argv = [a(tmp_path) if callable(a) else a for a in argv]
    full = {**os.environ, "RAG_DATA_DIR": str(tmp_path / "data"), **env}
    out = subprocess.run(RAG + argv, capture_output=True, text=True, env=full, timeout=120, cwd=tmp_path,
                         preexec_fn=_cap_memory)  # a runaway read of /dev/zero must not take the machine
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    assert named in out.stderr, out.stderr
    assert "error" in out.stderr.splitlines()[-1] or "hint:" in out.stderr.splitlines()[-1], out.stderr
    assert "pydantic" not in out.stderr
    assert not (tmp_path / "chroma").exists()  # nothing was built in the current folder


@pytest.mark.parametrize("command, env", [("serve", "RAG_UI_PORT"), ("api", "RAG_API_PORT")])
def test_a_busy_port_is_a_clear_error_before_any_indexing(tmp_path, command, env):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        out = run([command, "--port", str(port)], tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"error: port {port} on 127.0.0.1 is already in use" in out.stderr
    assert "--port" in out.stderr and env in out.stderr
    assert not (tmp_path / "chroma").exists()  # it failed before indexing the bundled corpus


def test_ingest_with_id_conflicts_keeps_the_indexed_papers_and_exits_1(index_copy, tmp_path):
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("id,title,abstract\n1,Quokka Gaits,We study quokka gaits.\n2,Wombat Burrows,We map wombat burrows.\n")
    b.write_text("id,title,abstract\n1,Echidna Spines,We count echidna spines.\n3,Platypus Bills,We model platypus bills.\n")
    assert run(["ingest", str(a)], index_copy).returncode == 0
    out = run(["ingest", str(b)], index_copy)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "conflict: id '1' is already used by 'Quokka Gaits'; 'Echidna Spines' was not indexed" in out.stderr
    assert "--replace" in out.stderr and "1 added" in out.stdout
    listing = run(["papers", "--json"], index_copy)
    titles = {p["id"]: p["title"] for p in json.loads(listing.stdout)}
    assert titles["1"] == "Quokka Gaits" and titles["3"] == "Platypus Bills" and len(titles) == 122
    replaced = run(["ingest", "--replace", str(b)], index_copy)
    assert replaced.returncode == 0 and "1 updated" in replaced.stdout


def test_duplicates_of_indexed_papers_are_reported_and_stored_once(index_copy, tmp_path):
    rows = [json.loads(line) for line in (ROOT / "rag" / "data" / "corpus.jsonl").read_text().splitlines()[:2]]
    for r in rows:
        r.pop("id")
    f = tmp_path / "copies.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run(["ingest", str(f)], index_copy)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("duplicate: ") == 2 and "stored once" in out.stderr
    assert "0 added" in out.stdout and "(119 papers)" in out.stdout


def test_a_damaged_index_is_reported_not_rebuilt(index_copy):
    db = index_copy / "chroma" / "chroma.sqlite3"
    db.write_bytes(b"")
    out = run(["ask", Q], index_copy)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "is empty (0 bytes)" in out.stderr and f"mv {index_copy} {index_copy}.broken" in out.stderr
    assert db.stat().st_size == 0  # the bundled corpus was not indexed over it
    assert json.loads((index_copy / "paper-rag.json").read_text())["papers"] == 119


def test_cache_warnings_are_one_line(index_copy):
    cache = index_copy / "cache" / "embeddings.sqlite"
    for side in ("-wal", "-shm"):
        cache.with_name(cache.name + side).unlink(missing_ok=True)
    cache.write_bytes(b"garbage " * 100)
    out = run(["ask", Q], index_copy)
    assert out.returncode == 0 and "Traceback" not in out.stderr
    warnings = [ln for ln in out.stderr.splitlines() if ln.startswith("warning: ")]
    assert len(warnings) == 1 and "embedding cache" in warnings[0] and "damaged" in warnings[0]


def test_an_unexpected_error_is_one_line_unless_rag_debug(monkeypatch, capsys):
    import rag.cli as cli

    def boom(args):
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(cli, "cmd_papers", boom)
    assert cli.main(["papers"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "error: unexpected RuntimeError: something nobody foresaw"
    assert "RAG_DEBUG=1" in err and "Traceback" not in err
    monkeypatch.setenv("RAG_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli.main(["papers"])
