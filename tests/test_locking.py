"""One writer at a time per data dir (threads and processes), and readers and writers in
other processes that stay consistent: real lock files, real subprocesses, real Chroma."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import synthetic_papers, write_jsonl_rows
from rag import Assistant, Settings
from rag.corpus import generated_id
from rag.errors import DataDirError, IndexBusyError
from rag.locking import OWNER_NAME, WriteLock
from rag.store import PaperStore

ROOT = Path(__file__).resolve().parents[1]
FACENET_Q = "What accuracy does FaceNet reach on LFW?"
FACENET_ID = "facenet-a-unified-embedding-for-face-recognition"

_HOLD = ("import sys, time\n"
         "from rag.locking import WriteLock\n"
         "lock = WriteLock(sys.argv[1]).__enter__()\n"
         "print('held', flush=True)\n"
         "time.sleep(120)\n")


def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding the data dir's write lock."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _rag(args: list[str], data: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "RAG_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "rag.cli", *args], env=env, text=True, **kw)


# --- the lock itself ---------------------------------------------------------------------------

def test_a_second_thread_waits_and_says_so(tmp_path):
    order: list[str] = []
    messages: list[str] = []
    held = threading.Event()

    def first():
        with WriteLock(tmp_path):
            held.set()
            time.sleep(0.5)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    held.wait()
    with WriteLock(tmp_path, on_wait=messages.append):
        order.append("second in")
    t.join()
    assert order == ["first done", "second in"]
    assert messages and "another ingest in this process" in messages[0] and messages[0].endswith("waiting ...")


def test_no_wait_in_another_thread_is_busy(tmp_path):
    held, release = threading.Event(), threading.Event()

    def first():
        with WriteLock(tmp_path):
            held.set()
            release.wait(10)

    t = threading.Thread(target=first)
    t.start()
    held.wait()
    try:
        with pytest.raises(IndexBusyError):
            with WriteLock(tmp_path, wait=False):
                pass
    finally:
        release.set()
        t.join()


def test_the_lock_is_reentrant_within_a_thread(tmp_path):
    with WriteLock(tmp_path) as outer:
        with WriteLock(tmp_path, wait=False) as inner:
            assert outer.outermost and not inner.outermost
        assert (tmp_path / OWNER_NAME).exists()  # still held by the outer one
    assert not (tmp_path / OWNER_NAME).exists()


def test_another_process_holding_the_lock_blocks_and_is_named(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(IndexBusyError) as info:
            with WriteLock(tmp_path, wait=False):
                pass
        assert f"another ingest (pid {proc.pid}" in info.value.message
        assert "--no-wait" in info.value.hint
        # Waiting: told who holds it; SIGKILL of the holder frees it (the kernel drops flock).
        messages: list[str] = []
        got = threading.Event()

        def waiter():
            with WriteLock(tmp_path, on_wait=messages.append):
                got.set()

        t = threading.Thread(target=waiter)
        t.start()
        time.sleep(1.0)
        assert not got.is_set()
        assert messages and messages[0].startswith(f"another ingest (pid {proc.pid}") and "waiting ..." in messages[0]
        proc.send_signal(signal.SIGKILL)
        t.join(30)
        assert got.is_set()
    finally:
        proc.kill()
        proc.wait()


def test_a_data_dir_that_is_a_file_is_a_data_dir_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DataDirError) as info:
        with WriteLock(f):
            pass
    assert "is a file" in info.value.message and "RAG_DATA_DIR" in info.value.hint
    assert "Remove" not in info.value.hint


# --- writers through the CLI ---------------------------------------------------------------------

def test_cli_ingest_waits_for_another_writer_or_fails_with_no_wait(index_copy, tmp_path):
    f = write_jsonl_rows(tmp_path / "three.jsonl", synthetic_papers(3, "W", 5))
    proc = _holder(index_copy)
    try:
        env = {**os.environ, "RAG_DATA_DIR": str(index_copy)}
        out = subprocess.run([sys.executable, "-m", "rag.cli", "ingest", "--no-wait", str(f)],
                             capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert f"error: another ingest (pid {proc.pid}" in out.stderr and "--no-wait" in out.stderr
        waiting = _rag(["ingest", str(f)], index_copy, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(5)
        assert waiting.poll() is None  # still waiting
        proc.send_signal(signal.SIGKILL)
        stdout, stderr = waiting.communicate(timeout=300)
        assert waiting.returncode == 0, stderr
        assert f"another ingest (pid {proc.pid}" in stderr and "waiting ..." in stderr
        assert "3 added" in stdout
    finally:
        proc.kill()
        proc.wait()


def test_the_ui_upload_takes_the_same_lock(index_copy, tmp_path):
    """Assistant.ingest (what the chat's upload calls) waits for a writer in another process."""
    a = Assistant(Settings(data_dir=index_copy, mode="extractive"))
    f = write_jsonl_rows(tmp_path / "up.jsonl", synthetic_papers(2, "U", 6))
    proc = _holder(index_copy)
    try:
        with pytest.raises(IndexBusyError):
            a.ingest([f], wait=False)
        messages: list[str] = []
        threading.Timer(2.0, proc.kill).start()
        report, _ = a.ingest([f], on_wait=messages.append)
        assert len(report.added) == 2 and messages and "waiting" in messages[0]
    finally:
        proc.kill()
        proc.wait()


# --- readers and writers in different processes ------------------------------------------------------

def _consistent(store: PaperStore) -> None:
    records = store._paper_records()
    referenced = [cid for rec in records.values() for cid in rec["chunk_ids"]]
    stored = set(store._all_ids(store.chunks))
    assert len(referenced) == len(set(referenced)), "a chunk is listed by two papers"
    assert set(referenced) <= stored, f"{len(set(referenced) - stored)} listed chunk(s) are missing"
    assert stored <= set(referenced), "orphaned chunks"


def _fresh_view(data: Path) -> PaperStore:
    """The index as a new process would open it."""
    return PaperStore(Settings(data_dir=data))


@pytest.mark.slow
def test_a_store_written_behind_by_another_process_reopens_before_writing(index_copy, tmp_path):
    """The chat's upload after a CLI ingest: a long-lived client that another process wrote
    behind used to break the index for good when it wrote ("Error finding id" ever after)."""
    a = Assistant(Settings(data_dir=index_copy, mode="extractive"))
    assert a.ask(FACENET_Q).citations  # the client is open and has read the index
    rows = synthetic_papers(1200, "X", 7)  # past Chroma's 1,000-record sync, where a stale client breaks the index
    out = subprocess.run([sys.executable, "-m", "rag.cli", "ingest",
                          str(write_jsonl_rows(tmp_path / "x.jsonl", rows))],
                         capture_output=True, text=True, env={**os.environ, "RAG_DATA_DIR": str(index_copy)},
                         timeout=900)
    assert out.returncode == 0, out.stderr
    # this process now reads what the other one wrote...
    title = rows[40]["title"]
    got = a.retrieve(title)
    assert got.contexts[0].title == title
    # ...and writes after it without damage
    report, _ = a.ingest(papers=[], paths=[write_jsonl_rows(tmp_path / "y.jsonl", synthetic_papers(20, "Y", 8))])
    assert len(report.added) == 20
    view = _fresh_view(index_copy)
    assert view.count() == 119 + 1200 + 20
    _consistent(view)
    for pid in list(view.all_papers())[::25]:
        assert view.chunks_of([pid])[pid], pid  # every chunk readable with its vector


@pytest.mark.slow
def test_a_reader_process_keeps_answering_during_an_ingest(index_copy, tmp_path):
    a = Assistant(Settings(data_dir=index_copy, mode="extractive"))
    expected = a.ask(FACENET_Q)
    rows = synthetic_papers(1200, "R", 9)
    writer = _rag(["ingest", str(write_jsonl_rows(tmp_path / "r.jsonl", rows))], index_copy,
                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    new_ids = {generated_id(r["title"]): r["title"] for r in rows}
    answers, found_meanwhile = [], 0
    while writer.poll() is None:
        answers.append(a.ask(FACENET_Q))
        # a paper the writer has just committed is found too (its chunks may be newer than our client)
        committed = [pid for pid in a.store.all_papers() if pid in new_ids]
        if committed:
            got = a.retrieve(new_ids[committed[-1]])
            found_meanwhile += committed[-1] in [c.paper_id for c in got.contexts]
    _, err = writer.communicate()
    assert writer.returncode == 0, err
    assert len(answers) >= 3, "the ingest ended before the reader asked anything"
    assert found_meanwhile > 0
    for ans in answers:
        assert [c.paper_id for c in ans.citations] == [c.paper_id for c in expected.citations]
        assert ans.text == expected.text
    # after the ingest the same (long-lived) reader finds the new papers
    for row in rows[::60]:
        got = a.retrieve(row["title"])
        assert got.contexts[0].title == row["title"]
        assert got.contexts[0].passages
    _consistent(_fresh_view(index_copy))


@pytest.mark.slow
def test_two_concurrent_ingests_of_2000_papers_each(index_copy, tmp_path):
    """Two `rag ingest` runs into one data dir used to break the index for good (and remove
    each other's chunks). Now the second waits, says so, and every paper of both files is
    listed and retrievable afterwards."""
    a_rows, b_rows = synthetic_papers(2000, "A", 11), synthetic_papers(2000, "B", 22)
    fa, fb = write_jsonl_rows(tmp_path / "a.jsonl", a_rows), write_jsonl_rows(tmp_path / "b.jsonl", b_rows)
    pa = _rag(["ingest", str(fa)], index_copy, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (index_copy / OWNER_NAME).exists():  # A holds the lock
        assert pa.poll() is None and time.time() < deadline, pa.stderr.read() if pa.poll() is not None else "slow"
        time.sleep(0.2)
    pb = _rag(["ingest", str(fb)], index_copy, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out_a, err_a = pa.communicate(timeout=3600)
    out_b, err_b = pb.communicate(timeout=3600)
    assert pa.returncode == 0, err_a[-2000:]
    assert pb.returncode == 0, err_b[-2000:]
    assert "Traceback" not in err_a + err_b
    assert f"another ingest (pid {pa.pid}" in err_b and "waiting ..." in err_b
    assert "2000 added" in out_a and "2000 added" in out_b

    store = _fresh_view(index_copy)
    papers = store.all_papers()
    assert len(papers) == 119 + 4000
    _consistent(store)  # no paper record points at a missing chunk, no orphans
    by_title = {p.title: pid for pid, p in papers.items()}
    assert all(r["title"] in by_title for r in a_rows + b_rows), "a paper of one file is not listed"
    # every chunk of every paper is readable with its vector and finds itself
    chunks = store.chunks_of(list(papers))
    assert all(chunks[pid] for pid in papers)
    from rag.retrieval import Retriever

    retriever = Retriever(store.settings, store)
    misses = []
    for row in a_rows + b_rows:
        got = retriever.retrieve(row["title"], k=5)
        if by_title[row["title"]] not in [c.paper_id for c in got.contexts]:
            misses.append(row["title"])
    assert not misses, f"{len(misses)} paper(s) not in the top 5 for their own title, e.g. {misses[:3]}"
    assert json.loads((index_copy / "paper-rag.json").read_text())["papers"] == 119 + 4000
