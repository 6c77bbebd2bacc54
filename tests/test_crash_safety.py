"""Crash safety and concurrency: a killed ingest is completed by the next one, and
readers keep getting consistent answers while a writer works."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rag import Assistant, Settings
from rag.corpus import bundled_corpus_path, load_bundled
from rag.store import PaperStore


def _index_is_consistent(store: PaperStore) -> tuple[int, int]:
    records = store._paper_records()
    referenced = [cid for rec in records.values() for cid in rec["chunk_ids"]]
    stored = store._all_ids(store.chunks)
    assert len(referenced) == len(set(referenced)), "a chunk is listed by two papers"
    assert set(referenced) == set(stored), "orphaned or missing chunks"
    return len(records), len(stored)


@pytest.mark.slow
def test_sigkill_mid_ingest_then_rerun_completes(tmp_path):
    data = tmp_path / "data"
    env = {**os.environ, "RAG_DATA_DIR": str(data), "RAG_EMBEDDING_BATCH_SIZE": "8"}
    proc = subprocess.Popen([sys.executable, "-m", "rag.cli", "ingest", str(bundled_corpus_path())],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    seen = b""
    deadline = time.time() + 240
    while time.time() < deadline:
        seen += os.read(proc.stderr.fileno(), 4096)
        done = [int(x) for x in re.findall(rb"(\d+)/119", seen)]
        if done and max(done) >= 30:
            break
        assert proc.poll() is None, seen.decode(errors="replace")[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    import sqlite3

    settings = Settings(data_dir=data)
    with sqlite3.connect(settings.cache_dir / "embeddings.sqlite") as db:
        embedded_before_kill = db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
    store = PaperStore(settings)
    before = len(store._paper_records())
    assert 0 < before < 119  # the kill landed mid-way

    report = store.ingest(load_bundled())
    assert report.unchanged == before  # committed papers are not redone
    assert len(report.added) == 119 - before
    # No chunk went through the model twice: what ran before the kill plus what ran now
    # is exactly one embedding per chunk.
    total_chunks = len(store.chunker.chunk_papers(load_bundled()))
    assert embedded_before_kill + store.ingest_embedder.misses == total_chunks
    papers, chunks = _index_is_consistent(store)
    assert papers == 119
    assert chunks == sum(json.loads(m["chunk_ids"]).__len__() for m in store.papers.get(include=["metadatas"])["metadatas"])


@pytest.mark.slow
def test_concurrent_asks_while_ingesting(index_copy):
    a = Assistant(Settings(data_dir=index_copy, mode="extractive"))
    question = "Which method clusters faces by building clean graphs for GCNs?"
    expected = a.ask(question)
    extra = [p for p in load_bundled()]
    from rag.types import Paper

    new_papers = [Paper(id=f"extra-{i}", title=f"Synthetic study {i} of zebra stripe patterns",
                        abstract=f"We study zebra stripe pattern number {i} with a quokka network. " * 3)
                  for i in range(40)]
    errors: list[BaseException] = []

    def writer():
        try:
            a.ingest(papers=new_papers)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=writer)
    t.start()
    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(lambda _: a.ask(question), range(20)))
    t.join()
    assert not errors
    for ans in answers:
        assert ans.citations[0].paper_id == expected.citations[0].paper_id
        assert ans.text == expected.text
    assert a.store.count() == 119 + 40
    _index_is_consistent(a.store)
    assert extra  # bundled corpus untouched
