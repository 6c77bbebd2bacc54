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
    # batch size 1 -> ingest embeds a window of ~32 chunks (WINDOW_BATCHES batches) per call,
    # about 6 papers; 15 papers take three calls and the second one fails
    settings = Settings(data_dir=tmp_path / "idx", embedding_batch_size=1)
    papers = corpus[:15]
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
    assert retry.count() == 15
    expected = sum(len(retry.chunker.chunk_paper(p)) for p in papers)
    assert retry.chunks.count() == expected
    _assert_consistent(retry)
    assert retry.ingest(papers).unchanged == 15


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


# --- ids that cannot capture another paper ----------------------------------------------------------

def _paper(pid: str, title: str, abstract: str) -> Paper:
    return Paper(id=pid, title=title, abstract=abstract)


def test_same_id_with_another_title_is_a_conflict_not_a_replacement(settings, corpus):
    store = PaperStore(settings)
    store.ingest(corpus[:3])
    target = corpus[1]
    intruder = _paper(target.id, "Quokka Face Maps", "We map quokka faces with a tiny network.")
    report = store.ingest([intruder, _paper("fresh-one", "Wombat Gaits", "We study wombat gaits.")])
    assert [c.paper_id for c in report.conflicts] == [target.id]
    assert report.conflicts[0].indexed_title == target.title
    assert "--replace" in report.conflicts[0].describe()
    assert report.added == ["fresh-one"] and report.updated == []  # the rest is ingested
    assert store.all_papers()[target.id].title == target.title  # nothing replaced
    # with replace=True the user asked for it
    report = store.ingest([intruder], replace=True)
    assert report.updated == [target.id] and not report.conflicts
    assert store.all_papers()[target.id].title == "Quokka Face Maps"
    _assert_consistent(store)


def test_two_files_numbering_ids_from_one_do_not_overwrite_each_other(settings):
    from rag.corpus import load_corpus

    store = PaperStore(settings)
    first = [_paper("1", "Quokka Gaits", "We study quokka gaits."), _paper("2", "Wombat Burrows", "We map burrows.")]
    store.ingest(first)
    second = [_paper("1", "Echidna Spines", "We count echidna spines."),
              _paper("3", "Platypus Bills", "We model platypus bills.")]
    report = store.ingest(second)
    assert [c.paper_id for c in report.conflicts] == ["1"]
    assert report.added == ["3"]
    assert store.all_papers()["1"].title == "Quokka Gaits"
    assert load_corpus  # (the loader keeps explicit ids; the store is where they meet)


def test_a_title_slug_collision_adds_a_paper_instead_of_replacing(settings, corpus, tmp_path):
    """The issue's FaceNet case: another title whose 48-character slug is an indexed id."""
    from rag.corpus import load_corpus

    store = PaperStore(settings)
    facenet = next(p for p in corpus if p.id == "facenet-a-unified-embedding-for-face-recognition")
    store.ingest([facenet])
    f = tmp_path / "f.jsonl"
    f.write_text(json.dumps({"title": "FaceNet: A Unified Embedding for Face Recognition and Verification at Web Scale",
                             "abstract": "We present a face recognition system."}) + "\n")
    report = store.ingest(load_corpus([f]).papers)
    assert len(report.added) == 1 and report.updated == [] and not report.conflicts
    assert store.all_papers()[facenet.id].abstract == facenet.abstract


def test_duplicates_of_indexed_papers_are_stored_once(settings, corpus):
    store = PaperStore(settings)
    store.ingest(corpus[:4])
    p = corpus[2]
    same_title = _paper("other-id", p.title.upper().replace(" ", "  ") + "!", "A new abstract.")
    same_abstract = _paper("other-id-2", "A Renamed Copy", "  " + p.abstract.lower() + " ")
    exact_copy_without_id = _paper("generated-id", p.title, p.abstract)
    report = store.ingest([same_title, same_abstract, exact_copy_without_id])
    assert [d.paper_id for d in report.duplicates] == ["other-id", "other-id-2", "generated-id"]
    assert {d.indexed_id for d in report.duplicates} == {p.id}
    assert report.added == [] and store.count() == 4


def test_duplicates_within_one_batch_and_repeated_ids(settings):
    store = PaperStore(settings)
    report = store.ingest([_paper("a", "Quokka Gaits", "One."), _paper("b", "quokka gaits", "Two."),
                           _paper("a", "Quokka Gaits", "One, again.")])
    assert report.added == ["a"] and [d.paper_id for d in report.duplicates] == ["b", "a"]
    _assert_consistent(store)


def test_a_corrected_abstract_of_an_id_less_paper_updates_it(settings, tmp_path):
    from rag.corpus import load_corpus

    store = PaperStore(settings)
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"title": "Quokka Gait Analysis", "abstract": "We study quokka gaits."}) + "\n")
    store.ingest(load_corpus([f]).papers)
    f.write_text(json.dumps({"title": "Quokka gait analysis", "abstract": "We study quokka gaits at 30 fps."}) + "\n")
    report = store.ingest(load_corpus([f]).papers)
    assert len(report.updated) == 1 and not report.duplicates and store.count() == 1


def test_records_of_older_indexes_get_their_keys_computed(settings, corpus):
    """Indexes built before title_key/abstract_key existed still catch duplicates."""
    store = PaperStore(settings)
    store.ingest(corpus[:2])
    got = store.papers.get(include=["metadatas"])
    stripped = [{**m, "title_key": None, "abstract_key": None} for m in got["metadatas"]]  # None deletes a key
    store.papers.update(ids=got["ids"], metadatas=stripped)
    store._set_meta(paper_keys=None)  # an older index does not say its records carry the keys
    assert "abstract_key" not in store.papers.get(include=["metadatas"])["metadatas"][0]
    report = store.ingest([_paper("copy", "Copy", corpus[0].abstract)])
    assert [d.indexed_id for d in report.duplicates] == [corpus[0].id]
    # the keys were written back once, so later ingests find duplicates by lookup
    assert all(m.get("abstract_key") for m in store.papers.get(include=["metadatas"])["metadatas"])
    assert store._collection_meta().get("paper_keys") == 1
    report = store.ingest([_paper("copy-2", corpus[1].title.upper(), "Another abstract.")])
    assert [d.indexed_id for d in report.duplicates] == [corpus[1].id]


# --- damage is reported, never papered over -----------------------------------------------------

def _assistant(data) -> "Assistant":
    from rag import Assistant

    return Assistant(Settings(data_dir=data, mode="extractive"))


@pytest.mark.parametrize("content", [b"", b"this is not a database" * 10])
def test_a_damaged_index_file_is_reported_and_not_rebuilt(index_copy, content):
    from rag.errors import IndexCorruptError

    db = index_copy / "chroma" / "chroma.sqlite3"
    db.write_bytes(content)
    a = _assistant(index_copy)
    with pytest.raises(IndexCorruptError) as info:
        a.ensure_index()
    assert str(db) in info.value.message
    assert f"mv {index_copy} {index_copy}.broken" in info.value.hint  # the fix moves it aside...
    assert "Remove" not in info.value.hint and "rm " not in info.value.hint  # ...and deletes nothing
    assert db.read_bytes() == content  # nothing was written over it


def test_an_index_that_comes_back_empty_is_reported(index_copy):
    """The folder was removed (or replaced by an empty one) behind paper-rag's back."""
    import shutil

    from rag.errors import IndexCorruptError

    assert json.loads((index_copy / "paper-rag.json").read_text())["papers"] == 119
    shutil.rmtree(index_copy / "chroma")
    with pytest.raises(IndexCorruptError, match="held 119"):
        _assistant(index_copy).ensure_index()


@pytest.mark.slow
def test_the_bundled_corpus_goes_only_into_a_new_index(tmp_path, corpus):
    from rag.errors import IndexMissingError

    new = tmp_path / "new"
    report = _assistant(new).ensure_index()
    assert report is not None and len(report.added) == 119
    state = json.loads((new / "paper-rag.json").read_text())
    assert state["bundled"] == "done" and state["papers"] == 119 and not state["user_writes"]
    assert _assistant(new).ensure_index() is None  # not twice
    # a user's index that was emptied on purpose is not refilled with the bundled corpus
    emptied = tmp_path / "emptied"
    store = PaperStore(Settings(data_dir=emptied))
    store.ingest(corpus[:2])
    store.delete_papers([p.id for p in corpus[:2]])
    with pytest.raises(IndexMissingError, match="no papers"):
        _assistant(emptied).ensure_index()
    # nor is an index paper-rag did not create (no marker)
    foreign = tmp_path / "foreign"
    PaperStore(Settings(data_dir=foreign))
    (foreign / "paper-rag.json").unlink()
    with pytest.raises(IndexMissingError):
        _assistant(foreign).ensure_index()


@pytest.mark.slow
def test_an_interrupted_first_indexing_is_finished(tmp_path, corpus):
    data = tmp_path / "d"
    store = PaperStore(Settings(data_dir=data))
    with store.writing(user=False) as state:  # as if killed after 10 bundled papers
        state.bundled = "pending"
        store._ingest_locked(corpus[:10], None, replace_all=False, replace=False)
    report = _assistant(data).ensure_index()
    assert report is not None and report.unchanged == 10 and len(report.added) == 109


def test_a_data_dir_that_is_a_file_is_not_called_damaged(tmp_path):
    from rag.errors import DataDirError

    f = tmp_path / "file"
    f.write_text("not a folder")
    with pytest.raises(DataDirError) as info:
        PaperStore(Settings(data_dir=f))
    assert "is a file" in info.value.message and "Remove" not in info.value.hint
    assert f.read_text() == "not a folder"


def _chattr(path, flag: str) -> bool:
    import subprocess

    return subprocess.run(["chattr", "-R", flag, str(path)], capture_output=True).returncode == 0


def test_a_read_only_data_dir_is_not_called_damaged(index_copy):
    """chmod does not stop root (CI), the immutable flag does; skipped where chattr cannot set it."""
    from rag.errors import DataDirError

    before = sorted(p.name for p in index_copy.rglob("*"))
    if not _chattr(index_copy, "+i"):
        pytest.skip("chattr +i is not available here")
    try:
        with pytest.raises(DataDirError) as info:
            _assistant(index_copy).ensure_index()
        assert "read-only" in info.value.message or "write access" in info.value.message
        assert "Remove" not in info.value.hint and "rm " not in info.value.hint
    finally:
        _chattr(index_copy, "-i")
    assert sorted(p.name for p in index_copy.rglob("*")) == before


# --- caches rebuild themselves, with a warning ---------------------------------------------------

def test_a_garbage_embedding_cache_is_moved_aside(index_copy, caplog):
    cache = index_copy / "cache" / "embeddings.sqlite"
    for side in ("-wal", "-shm"):
        cache.with_name(cache.name + side).unlink(missing_ok=True)
    cache.write_bytes(b"garbage " * 500)
    a = _assistant(index_copy)
    with caplog.at_level("WARNING", logger="rag"):
        answer = a.ask("What accuracy does FaceNet reach on LFW?")
        report, _ = a.ingest(papers=[_paper("z1", "Zebra Stripe Counting", "We count zebra stripes.")])
    assert answer.citations and len(report.added) == 1
    assert any("embedding cache" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)
    assert cache.with_name("embeddings.sqlite.broken").read_bytes().startswith(b"garbage")


@pytest.mark.parametrize("name, content", [("lexicon.sqlite", b"garbage " * 500), ("lexicon.sqlite", b""),
                                           ("bm25/data.npy", b"{bad"), ("bm25/build.json", b"[]"),
                                           ("bm25/ids_offsets.npy", b"\x93NUMPY")])
def test_a_damaged_lexical_index_is_rebuilt(index_copy, caplog, name, content):
    """The lexicon (SQLite) and its BM25 build are caches of the store: damage is reported
    with a warning and they are rebuilt from the index, never an error."""
    a = _assistant(index_copy)
    a.ask("Which paper clusters faces?")  # the lexical index exists (the ingest built it)
    folder = index_copy / "lexical" / "papers"
    if name.startswith("bm25/"):
        target = next(folder.glob("bm25-*")) / name.split("/", 1)[1]
    else:
        target = folder / name
        for side in ("-wal", "-shm"):
            folder.joinpath(name + side).unlink(missing_ok=True)
    assert target.exists()
    a.store.lexicon.close()  # the damage happens between two runs
    target.write_bytes(content)
    b = _assistant(index_copy)
    with caplog.at_level("WARNING", logger="rag"):
        answer = b.ask("What accuracy does FaceNet reach on LFW?")
    assert answer.citations[0].paper_id == "facenet-a-unified-embedding-for-face-recognition"
    if content:  # (an empty file is an empty SQLite database: rebuilt without a word)
        assert any("damaged" in r.getMessage() for r in caplog.records)
    assert b.store.lexicon.count() == 119


def test_a_damaged_marker_only_costs_its_checks(index_copy, caplog):
    """paper-rag.json only adds checks: a garbled one is reported and written again at the next ingest."""
    marker = index_copy / "paper-rag.json"
    marker.write_text("{not json")
    with caplog.at_level("WARNING", logger="rag"):
        store = PaperStore(Settings(data_dir=index_copy))
        assert store.count() == 119
    assert any("paper-rag.json is damaged" in r.getMessage() for r in caplog.records)
    store.ingest([_paper("m1", "Marker Mending", "We mend markers.")])
    state = json.loads(marker.read_text())
    assert state["papers"] == 120 and state["writing"] is False and state["user_writes"] is True
