"""The Chroma paper store: incremental ingest, replacement, sweeping, model checks, failures."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from rag.corpus import load_bundled
from rag.embeddings import get_embedder
from rag.errors import IndexMismatchError, IndexMissingError
from rag.settings import Settings
from rag.store import PaperStore
from rag.types import Paper


@pytest.fixture(scope="module")
def corpus() -> list[Paper]:
    return load_bundled()


@pytest.fixture(scope="module")
def real_embedder():
    return get_embedder(Settings())


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "idx")


def _chunk_ids(store: PaperStore) -> set[str]:
    return set(store.chunks.get(include=[])["ids"])


def _records(store: PaperStore) -> dict[str, list[str]]:
    got = store.papers.get(include=["metadatas"])
    return {pid: json.loads(m["chunk_ids"]) for pid, m in zip(got["ids"], got["metadatas"])}


def _assert_consistent(store: PaperStore) -> None:
    """Every paper record points at existing chunks, and every chunk belongs to a record."""
    recs = _records(store)
    referenced = [cid for ids in recs.values() for cid in ids]
    assert len(referenced) == len(set(referenced))
    assert set(referenced) == _chunk_ids(store)
    got = store.chunks.get(include=["metadatas"])
    for cid, meta in zip(got["ids"], got["metadatas"]):
        assert cid in recs[meta["paper_id"]]


class FakeEmbedder:
    """Outermost edge stand-in: a different embedding model with the same interface."""

    model_id = "other"
    dim = 384

    def count_tokens(self, text: str) -> int:
        return len(text.split()) + 2

    def embed(self, texts):
        rng = np.random.default_rng(len(texts))
        v = rng.normal(size=(len(texts), 384)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def embed_one(self, text):
        return self.embed([text])[0]


class FlakyEmbedder:
    """The real model, failing on one call (like a crash or OOM in the middle of an ingest)."""

    def __init__(self, real, fail_on: int):
        self.real, self.fail_on, self.calls = real, fail_on, 0
        self.model_id = real.model_id

    def count_tokens(self, text: str) -> int:
        return self.real.count_tokens(text)

    def embed(self, texts):
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("embedding crashed")
        return self.real.embed(texts)

    def embed_one(self, text):
        return self.real.embed_one(text)


class RecordingBar:
    instances: list["RecordingBar"] = []

    def __init__(self, total=None, desc=None, unit=None):
        self.total, self.desc, self.unit = total, desc, unit
        self.updates: list[int] = []
        self.closed = False
        RecordingBar.instances.append(self)

    def update(self, n=1):
        assert not self.closed
        self.updates.append(n)

    def close(self):
        self.closed = True


# --- incremental ingest ----------------------------------------------------------------------

def test_ingest_then_reingest_is_a_noop(settings, corpus):
    papers = corpus[:5]
    store = PaperStore(settings)
    with pytest.raises(IndexMissingError):
        store.require_papers()
    expected_chunks = sum(len(store.chunker.chunk_paper(p)) for p in papers)

    first = store.ingest(papers)
    assert first.papers_in == 5
    assert first.added == [p.id for p in papers]
    assert first.updated == [] and first.unchanged == 0
    assert first.chunks_embedded == expected_chunks
    assert store.count() == 5
    assert store.chunks.count() == expected_chunks
    store.require_papers()
    rev = store.revision()
    ids = _chunk_ids(store)
    _assert_consistent(store)

    second = store.ingest(papers)
    assert second.added == [] and second.updated == []
    assert second.unchanged == 5
    assert second.chunks_embedded == 0 and second.chunks_deleted == 0
    assert not second.changed
    assert store.chunks.count() == expected_chunks
    assert _chunk_ids(store) == ids
    assert store.revision() == rev

    # a fresh store object on the same folder sees the same index and also skips everything
    reopened = PaperStore(settings)
    third = reopened.ingest(papers)
    assert third.unchanged == 5 and third.chunks_embedded == 0
    assert reopened.revision() == rev


def test_stored_papers_round_trip(settings, corpus):
    p = dataclasses.replace(corpus[1], authors=("Ann Lee", "Bo Chen"), year=2022, url="https://x.org/p",
                            metadata={"venue": "CVPR"})
    store = PaperStore(settings)
    store.ingest([p, corpus[2]])
    got = store.all_papers()[p.id]
    assert got == p
    vecs = store.paper_vectors([p.id])
    assert abs(float(np.linalg.norm(vecs[p.id])) - 1.0) < 1e-4
    # the paper's own title finds its chunks first
    hits = store.query_chunks(store.embedder.embed_one(p.title), 3)
    assert hits[0].paper_id == p.id
    assert hits == sorted(hits, key=lambda h: -h.score)


def test_changed_abstract_replaces_its_chunks(settings, corpus):
    papers = corpus[:4]
    store = PaperStore(settings)
    store.ingest(papers)
    target = papers[1]
    old_ids = _records(store)[target.id]
    rev = store.revision()

    new_abstract = ("We propose a completely different method for counting penguins in satellite images. "
                    "It uses a transformer. Results improve by 12 points.")
    changed = dataclasses.replace(target, abstract=new_abstract)
    report = store.ingest([papers[0], changed, papers[2], papers[3]])
    assert report.updated == [target.id]
    assert report.added == []
    assert report.unchanged == 3
    assert report.chunks_deleted == len(old_ids)
    assert store.count() == 4
    assert not set(old_ids) & _chunk_ids(store)
    new_ids = _records(store)[target.id]
    assert set(new_ids) <= _chunk_ids(store)
    assert store.all_papers()[target.id].abstract == new_abstract
    texts = [row[1] for row in store.chunks_of([target.id])[target.id]]
    assert " ".join(texts) == new_abstract
    assert store.revision() != rev
    _assert_consistent(store)


def test_appending_a_sentence_reuses_unchanged_chunks(settings, corpus):
    store = PaperStore(settings)
    paper = next(p for p in corpus if 3 <= len(store.chunker.chunk_paper(p)) <= 6)
    store.ingest([paper])
    old_ids = _records(store)[paper.id]
    longer = dataclasses.replace(paper, abstract=paper.abstract + " We also release a small demo.")
    report = store.ingest([longer])
    assert report.updated == [paper.id]
    new_ids = _records(store)[paper.id]
    kept = set(old_ids) & set(new_ids)
    assert kept and len(kept) < len(new_ids)
    assert report.chunks_reused == len(kept)
    assert report.chunks_embedded == len(new_ids) - len(kept)
    _assert_consistent(store)


def test_replace_all_removes_papers_not_in_the_input(settings, corpus):
    store = PaperStore(settings)
    store.ingest(corpus[:5])
    report = store.ingest(corpus[:3], replace_all=True)
    assert report.unchanged == 3
    assert report.chunks_deleted > 0
    assert set(store.all_papers()) == {p.id for p in corpus[:3]}
    _assert_consistent(store)


def test_orphan_chunks_are_swept(settings, corpus, real_embedder):
    papers = corpus[:3]
    store = PaperStore(settings)
    store.ingest(papers)
    n = store.chunks.count()
    rev = store.revision()
    vec = real_embedder.embed_one("an orphan chunk").tolist()
    store.chunks.add(ids=["ghost#0000"], embeddings=[vec], documents=["an orphan chunk"],
                     metadatas=[{"paper_id": "ghost", "title": "Ghost", "index": 0, "n_chunks": 1}])
    assert store.chunks.count() == n + 1

    report = store.ingest(papers)
    assert report.chunks_deleted == 1
    assert report.unchanged == 3 and report.chunks_embedded == 0
    assert "ghost#0000" not in _chunk_ids(store)
    assert store.chunks.count() == n
    assert store.revision() != rev
    _assert_consistent(store)


def test_paper_with_missing_chunks_is_redone(settings, corpus):
    papers = corpus[:3]
    store = PaperStore(settings)
    store.ingest(papers)
    lost = _records(store)[papers[0].id][0]
    store.chunks.delete(ids=[lost])
    report = store.ingest(papers)
    assert report.updated == [papers[0].id]
    assert report.unchanged == 2
    assert report.chunks_embedded == 1  # only the missing chunk is embedded again
    assert lost in _chunk_ids(store)
    _assert_consistent(store)


def test_index_built_with_another_model_is_refused(settings, corpus):
    other = PaperStore(settings, embedder=FakeEmbedder())
    other.ingest(corpus[:2])
    assert other.count() == 2
    with pytest.raises(IndexMismatchError) as info:
        PaperStore(settings)  # the real embedder
    msg = str(info.value)
    assert "'other'" in msg and "all-MiniLM-L6-v2@onnx-int8" in msg
    assert "--rebuild" in info.value.hint
    # the refused open changed nothing: the other model still owns the index
    again = PaperStore(settings, embedder=FakeEmbedder())
    assert again.count() == 2
    assert (again.papers.metadata or {}).get("embedding_model") == "other"


def test_failed_batch_keeps_committed_papers_and_next_ingest_completes(tmp_path, corpus, real_embedder):
    # batch size 1 -> a batch is flushed every 4 chunks, i.e. about one paper per embed call
    settings = Settings(data_dir=tmp_path / "idx", embedding_batch_size=1)
    papers = corpus[:6]
    flaky = FlakyEmbedder(real_embedder, fail_on=2)
    store = PaperStore(settings, embedder=flaky)
    with pytest.raises(RuntimeError, match="embedding crashed"):
        store.ingest(papers)
    committed = set(store.all_papers())
    assert committed and committed < {p.id for p in papers}
    assert committed == {p.id for p in papers[: len(committed)]}
    _assert_consistent(store)

    retry = PaperStore(settings, embedder=real_embedder)
    report = retry.ingest(papers)
    assert report.unchanged == len(committed)
    assert sorted(report.added) == sorted({p.id for p in papers} - committed)
    assert report.updated == []
    assert retry.count() == 6
    expected = sum(len(retry.chunker.chunk_paper(p)) for p in papers)
    assert retry.chunks.count() == expected
    _assert_consistent(retry)
    assert retry.ingest(papers).unchanged == 6


def test_delete_papers(settings, corpus):
    papers = corpus[:5]
    store = PaperStore(settings)
    store.ingest(papers)
    rev = store.revision()
    gone = [papers[1].id, papers[3].id]
    store.delete_papers(gone)
    assert store.count() == 3
    assert set(store.all_papers()) == {p.id for i, p in enumerate(papers) if i not in (1, 3)}
    assert store.chunks_of(gone) == {gone[0]: [], gone[1]: []}
    assert store.revision() != rev
    _assert_consistent(store)
    store.delete_papers([])  # no-op
    report = store.ingest(papers)
    assert sorted(report.added) == sorted(gone)
    assert report.unchanged == 3


def test_progress_factory_is_used(settings, corpus):
    RecordingBar.instances = []
    store = PaperStore(settings)
    store.ingest(corpus[:4], progress=RecordingBar)
    assert len(RecordingBar.instances) == 1
    bar = RecordingBar.instances[0]
    assert bar.total == 4 and bar.desc and bar.unit == "paper"
    assert sum(bar.updates) == 4
    assert bar.closed

    # only the papers that need work are counted
    store.ingest(corpus[:6], progress=RecordingBar)
    assert len(RecordingBar.instances) == 2
    assert RecordingBar.instances[1].total == 2 and sum(RecordingBar.instances[1].updates) == 2
    # nothing to do -> no bar at all
    store.ingest(corpus[:6], progress=RecordingBar)
    assert len(RecordingBar.instances) == 2


def test_bundled_index_has_119_papers(built_index):
    store = PaperStore(Settings(data_dir=built_index))
    assert store.count() == 119
    assert set(store.all_papers()) == {p.id for p in load_bundled()}
    assert store.chunks.count() > 119
    _assert_consistent(store)


def test_rebuild_after_delete_reuses_cached_embeddings(tmp_path):
    from rag.corpus import load_bundled

    settings = Settings(data_dir=tmp_path / "cached")
    store = PaperStore(settings)
    papers = load_bundled()[:6]
    first = store.ingest(papers)
    assert store.ingest_embedder.misses == first.chunks_embedded > 0
    store.delete_papers([p.id for p in papers])
    assert store.count() == 0
    before = store.ingest_embedder.misses
    again = store.ingest(papers)
    assert again.chunks_embedded == first.chunks_embedded  # rewritten to Chroma...
    assert store.ingest_embedder.misses == before  # ...without running the model again
    assert store.count() == 6


def test_corrupt_index_is_a_clear_error(tmp_path):
    from rag.errors import IndexCorruptError

    settings = Settings(data_dir=tmp_path / "broken")
    settings.chroma_path.mkdir(parents=True)
    (settings.chroma_path / "chroma.sqlite3").write_bytes(b"this is not a database")
    with pytest.raises(IndexCorruptError) as exc:
        PaperStore(settings)
    assert str(settings.chroma_path) in exc.value.message and "rag ingest" in exc.value.hint


def test_unreachable_chroma_server_is_a_clear_error(tmp_path):
    from rag.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot reach the Chroma server"):
        PaperStore(Settings(data_dir=tmp_path, chroma_url="http://127.0.0.1:9"))
