"""The lexical index on disk (rag/lexicon.py) and the store reading papers on demand."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from rag.analysis import corpus_names
from rag.corpus import load_bundled
from rag.lexicon import LexicalIndex, Lexicon, build_matrix
from rag.settings import Settings
from rag.store import PaperStore
from rag.text import terms
from rag.types import Paper

ROOT = Path(__file__).resolve().parents[1]


def _questions() -> list[str]:
    return [json.loads(line)["question"] for name in ("questions.jsonl", "heldout.jsonl")
            for line in (ROOT / "eval" / name).read_text().splitlines() if line.strip()]


def _doc(p: Paper) -> list[str]:
    return terms(f"{p.title} {p.title} {p.abstract}")


@pytest.fixture(scope="module")
def corpus() -> list[Paper]:
    return load_bundled()


# --- BM25: the same numbers as bm25s -------------------------------------------------------------

def test_scores_are_bm25s_scores_bit_for_bit(corpus):
    """Rankings must not move: every eval question scores exactly as an in-memory bm25s index."""
    import bm25s

    docs = [_doc(p) for p in corpus]
    ours = LexicalIndex.from_documents([p.id for p in corpus], docs)
    ref = bm25s.BM25(k1=1.2, b=0.75)
    ref.index(docs, show_progress=False)
    for q in _questions() + ["face face face recognition", "zyxwvut", ""]:
        qt = terms(q)
        known = [t for t in qt if t in ref.vocab_dict]
        expected = ref.get_scores(known) if known else np.zeros(len(corpus), dtype=np.float32)
        assert np.array_equal(ours.scores(qt), expected), q


def test_top_is_the_stable_argsort_of_positive_scores():
    rng = np.random.default_rng(7)
    for trial in range(200):
        n = int(rng.integers(0, 300))
        scores = rng.choice([0.0, 0.5, 1.25, 2.0, 3.5], size=n).astype(np.float32)  # many ties
        if trial % 3 == 0:
            scores = rng.random(n).astype(np.float32) * (rng.random(n) > 0.4)
        for m in (1, 5, 80, 400):
            expected = [i for i in np.argsort(-scores, kind="stable")[:m] if scores[i] > 0]
            assert list(LexicalIndex.top(scores, m)) == expected


def test_build_matrix_of_empty_documents():
    m = build_matrix([np.zeros(0, np.int32), np.zeros(0, np.int32)], 0)
    assert m["n_docs"] == 2 and len(m["data"]) == 0 and list(m["indptr"]) == [0]
    lex = LexicalIndex.from_documents(["a", "b"], [[], ["x"]])
    assert list(lex.scores(["x"])) == [0.0, pytest.approx(lex.term_idf("x") * 1 / (1.2 * (0.25 + 0.75 * 1 / 0.5) + 1))]


# --- the lexicon: on disk, incremental ------------------------------------------------------------

def test_a_build_is_memory_mapped_and_scores_like_one_in_memory(tmp_path, corpus):
    lex = Lexicon(tmp_path / "lex")
    lex.upsert((p.id, "h", p.title, p.abstract) for p in corpus)
    built = lex.build("rev-a")
    opened = Lexicon(tmp_path / "lex").open_build("rev-a")  # another process
    assert isinstance(opened.data, np.memmap) and isinstance(opened.indices, np.memmap)
    memory = LexicalIndex.from_documents([p.id for p in corpus], [_doc(p) for p in corpus])
    for q in _questions()[:40]:
        qt = terms(q)
        assert np.array_equal(opened.scores(qt), memory.scores(qt))
        assert opened.idf_of(qt) == memory.idf_of(qt)
    assert list(opened.ids) == list(built.ids) == [p.id for p in corpus]
    assert Lexicon(tmp_path / "lex").open_build("rev-b") is None


def test_updating_a_paper_keeps_its_place_and_removing_drops_it(tmp_path, corpus):
    lex = Lexicon(tmp_path / "lex")
    lex.upsert((p.id, "h", p.title, p.abstract) for p in corpus[:5])
    changed = dataclasses.replace(corpus[2], abstract="Quokkas counted by a zebra network.")
    lex.upsert([(changed.id, "h2", changed.title, changed.abstract)])
    lex.remove([corpus[0].id])
    index = lex.build("r")
    assert list(index.ids) == [p.id for p in corpus[1:5]]
    assert index.doc_freq("quokka") == 1  # the new abstract, in the updated paper's old place
    assert lex.doc_hashes()[changed.id] == "h2"


def _expected_names(papers):
    return corpus_names(f"{p.title} {p.abstract}" for p in papers)


def test_the_corpus_name_map_is_kept_incrementally(tmp_path, corpus):
    lex = Lexicon(tmp_path / "lex")
    lex.upsert((p.id, "h", p.title, p.abstract) for p in corpus)
    expected = _expected_names(corpus)
    assert expected  # e.g. 'lfw' -> 'LFW'
    plain_words = {w for p in corpus for w in p.abstract.split() if w.isalpha() and w.islower()}
    for word in list(expected) + sorted(plain_words)[:300] + ["zyxwvut", "lfw", "face"]:
        assert lex.name_for(word) == expected.get(word), word
    # a paper that writes the name in lower case takes it out of the map; removing it puts it back
    word = next(w for w in ("lfw", "arcface", "celeba") if w in expected)
    casual = Paper(id="casual", title="Casual", abstract=f"we evaluate on {word} and more")
    lex.upsert([(casual.id, "h", casual.title, casual.abstract)])
    assert lex.name_for(word) is None
    lex.remove(["casual"])
    assert lex.name_for(word) == expected[word]
    # the spelling is the first paper's (index order), as corpus_names gives it
    first = Paper(id="z-first", title="Zz", abstract="We compare ZYXnet with ZyxNet.")
    later = Paper(id="a-later", title="Aa", abstract="ZYXNET again.")
    lex.upsert([(first.id, "h", first.title, first.abstract), (later.id, "h", later.title, later.abstract)])
    assert lex.name_for("zyxnet") == _expected_names([*corpus, first, later])["zyxnet"] == "ZYXnet"


# --- the store: records by id, the lexicon in step with every write --------------------------------

def _settings(tmp_path) -> Settings:
    return Settings(data_dir=tmp_path / "idx", mode="extractive")


def test_ingest_and_delete_keep_the_lexicon_and_its_build_current(tmp_path, corpus):
    store = PaperStore(_settings(tmp_path))
    store.ingest(corpus[:6])
    rev = store.revision()
    assert store.lexicon.synced == rev and store.lexicon.count() == 6
    index, current = store.lexical(rev)
    assert current and list(index.ids) == [p.id for p in corpus[:6]]
    store.delete_papers([corpus[1].id])
    rev2 = store.revision()
    assert rev2 != rev and store.lexicon.synced == rev2
    assert store.lexicon.open_build(rev2) is not None  # built by the writer, no reader has to
    assert list(store.lexical(rev2)[0].ids) == [p.id for i, p in enumerate(corpus[:6]) if i != 1]


def test_a_lexicon_that_disagrees_with_the_store_is_reconciled(tmp_path, corpus):
    """A killed write (or another client of a Chroma server) leaves the lexicon behind the
    store: it is reconciled by id and content hash, tokenizing only what changed."""
    settings = _settings(tmp_path)
    store = PaperStore(settings)
    store.ingest(corpus[:5])
    store.lexicon.mark("")  # as if a writer died mid-way
    store.lexicon.remove([corpus[3].id])
    store.papers.delete(ids=[corpus[4].id])  # behind paper-rag's back
    fresh = PaperStore(settings)
    index, current = fresh.lexical()
    assert current and sorted(index.ids) == sorted(p.id for p in corpus[:4])
    assert fresh.lexicon.synced == fresh.revision()


def test_an_index_without_a_lexicon_gets_one(index_copy):
    import shutil

    shutil.rmtree(index_copy / "lexical")  # an index built by an older version
    from rag import Assistant

    a = Assistant(Settings(data_dir=index_copy, mode="extractive"))
    answer = a.ask("What accuracy does FaceNet reach on LFW?")
    assert answer.citations[0].paper_id == "facenet-a-unified-embedding-for-face-recognition"
    assert a.store.lexicon.count() == 119


def test_a_reader_uses_the_latest_build_while_a_writer_holds_the_lock(tmp_path, corpus):
    from rag.locking import WriteLock

    settings = _settings(tmp_path)
    store = PaperStore(settings)
    store.ingest(corpus[:4])
    old = store.revision()
    store._bump_revision()  # the store moved on; no build for the new revision yet
    new = store.revision()
    assert new != old and store.lexicon.open_build(new) is None
    held, release = threading.Event(), threading.Event()

    def writer():
        with WriteLock(settings.data_dir):
            held.set()
            release.wait(30)

    t = threading.Thread(target=writer)
    t.start()
    held.wait(30)
    try:
        index, current = store.lexical(new)
        assert not current and index.revision == old  # the latest build, not a rebuild
    finally:
        release.set()
        t.join()
    index, current = store.lexical(new)
    assert current and index.revision == new


def test_a_question_reads_only_the_retrieved_papers(index_copy, monkeypatch):
    """No whole-index read on the query path: answering fails if anything pages through a
    collection or loads every paper."""
    from rag import Assistant

    a = Assistant(Settings(data_dir=index_copy, mode="extractive"))
    a.ask("Which paper clusters faces?")  # opens everything once

    def forbidden(*args, **kwargs):
        raise AssertionError("the query path read the whole index")

    monkeypatch.setattr(PaperStore, "_pages_of", forbidden)
    monkeypatch.setattr(PaperStore, "all_papers", forbidden)
    monkeypatch.setattr(PaperStore, "iter_papers", forbidden)
    reads: list[int] = []
    real_get = a.store.papers.get

    def counting_get(*args, **kwargs):
        got = real_get(*args, **kwargs)
        reads.append(len(got["ids"]))
        return got

    monkeypatch.setattr(a.store.papers, "get", counting_get)
    for q in ["What accuracy does FaceNet reach on LFW?", "Which papers perform face swapping with diffusion models?",
              "how many images does lpff have?"]:
        answer = a.ask(q)
        assert answer.contexts
    assert reads and max(reads) <= 2 * a.settings.k + 3  # records of the candidates at most


def test_paper_listing_pages_in_title_order(built_index):
    from rag import Assistant

    a = Assistant(Settings(data_dir=built_index, mode="extractive"))
    everything = sorted(load_bundled(), key=lambda p: p.title.lower())
    listed = a.papers()
    assert len(listed) == 119
    assert [p.id for p in listed[:200]] == [p.id for p in everything]
    assert [p.id for p in listed[10:13]] == [p.id for p in everything[10:13]]
    assert listed[-1].id == everything[-1].id
    assert [p.id for p in listed] == [p.id for p in everything]  # iterating pages through the same order
    assert sorted(listed.titles()) == sorted(p.title for p in everything)  # from the lexicon, no record read
    for needle in ("FaceNet", "landmark", "diffusion", "  GAN ", "zebra-quokka", "facenet-a-unified-embedding-for-face-recognition"):
        n = needle.lower().strip()
        in_title = [p for p in everything if n in p.title.lower() or n == p.id.lower()]
        in_abstract = [p for p in everything if p not in in_title and n in p.abstract.lower()]
        got = a.papers(needle)
        assert [p.id for p in got] == [p.id for p in in_title + in_abstract], needle
        assert len(got) == len(in_title) + len(in_abstract)
    assert a.paper("facenet-a-unified-embedding-for-face-recognition").title.startswith("FaceNet")
    assert a.paper("no-such-paper") is None
