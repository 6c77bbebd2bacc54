"""Sentence splitting and token-aware chunking against the real tokenizers and corpus."""

from __future__ import annotations

import hashlib
import random
import re
import socket
import string
from collections import defaultdict

import pytest

from rag.chunking import Chunker, provision_tiktoken, split_sentences
from rag.corpus import load_bundled
from rag.embeddings import MAX_TOKENS, get_embedder
from rag.settings import Settings
from rag.text import words
from rag.types import Paper


@pytest.fixture(scope="module")
def embedder():
    return get_embedder(Settings())




@pytest.fixture(scope="module")
def corpus():
    return load_bundled()


@pytest.fixture(scope="module")
def corpus_chunks(chunker, corpus):
    by_paper = defaultdict(list)
    for c in chunker.chunk_papers(corpus):
        by_paper[c.paper_id].append(c)
    return by_paper


# --- sentence splitting ------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Deep models, e.g. CNNs and GNNs, are used. We test them.",
     ["Deep models, e.g. CNNs and GNNs, are used.", "We test them."]),
    ("As in Zhang et al. (2020), we use graphs. Results follow.",
     ["As in Zhang et al. (2020), we use graphs.", "Results follow."]),
    ("Accuracy improves by 3.5 points. It is 2.75x faster.",
     ["Accuracy improves by 3.5 points.", "It is 2.75x faster."]),
    ("As shown in Fig. 3 the loss drops. See Eq. 2 too.",
     ["As shown in Fig. 3 the loss drops.", "See Eq. 2 too."]),
    ("We compare with i.e. Baselines. Done!", ["We compare with i.e. Baselines.", "Done!"]),
    ("Is it good? Yes! It is (really). Next \"quote\" here.",
     ["Is it good?", "Yes!", "It is (really).", "Next \"quote\" here."]),
    ("  ", []),
])
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def _tokens(text: str) -> list[str]:
    """Whitespace tokens; a sentence end glued to the next by '~' (LaTeX) counts as a break."""
    return re.sub(r"(?<=[.!?]~)(?=[A-Z])", " ", text).split()


def test_split_sentences_loses_nothing(corpus):
    for p in corpus:
        assert _tokens(" ".join(split_sentences(p.abstract))) == _tokens(p.abstract)


def test_split_sentences_breaks_at_latex_tilde():
    assert split_sentences("talking head generation.~Specifically, we devise it. Next.") == [
        "talking head generation.~", "Specifically, we devise it.", "Next."]


# --- chunking the bundled corpus -----------------------------------------------------------

def test_every_corpus_chunk_fits_the_model_window(corpus_chunks, embedder):
    n = 0
    for chunks in corpus_chunks.values():
        for c in chunks:
            assert embedder.count_tokens(c.embed_text) <= MAX_TOKENS, c.id
            n += 1
    assert n > 119  # abstracts really are split


def test_every_chunk_carries_paper_id_title_and_order(corpus_chunks, corpus):
    assert set(corpus_chunks) == {p.id for p in corpus}
    for p in corpus:
        chunks = corpus_chunks[p.id]
        assert [c.index for c in chunks] == list(range(len(chunks)))
        for c in chunks:
            assert c.paper_id == p.id
            assert c.title == p.title
            assert c.n_chunks == len(chunks)
            assert c.id.startswith(p.id + "#")
            assert c.embed_text == f"{p.title}. {c.text}"
            assert c.text.strip()
    all_ids = [c.id for cs in corpus_chunks.values() for c in cs]
    assert len(all_ids) == len(set(all_ids))


def test_chunks_reproduce_abstract_words_in_order(corpus_chunks, corpus):
    for p in corpus:
        joined = " ".join(c.text for c in corpus_chunks[p.id])
        assert words(joined) == words(p.abstract), p.id


def test_chunks_reproduce_abstract_text_exactly(corpus_chunks, corpus):
    broken = [p.id for p in corpus
              if _tokens(" ".join(c.text for c in corpus_chunks[p.id])) != _tokens(p.abstract)]
    starts = [c.text[:20] for cs in corpus_chunks.values() for c in cs if c.text[0] in ",;"]
    assert broken == [] and starts == []


def test_chunks_respect_target_size_mostly(corpus_chunks, chunker):
    sizes = [chunker.n_tokens(c.text) for cs in corpus_chunks.values() for c in cs]
    # a chunk only exceeds the target when one sentence alone does (never after splitting long ones)
    assert max(sizes) <= chunker.chunk_tokens
    assert sum(sizes) / len(sizes) > chunker.chunk_tokens / 3


# --- pathological abstracts -------------------------------------------------------------------

def test_giant_word_is_split_into_fitting_chunks(chunker, embedder):
    rnd = random.Random(7)
    blob = "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(5000))
    paper = Paper(id="blob", title="A Paper With A Blob", abstract=blob)
    chunks = chunker.chunk_paper(paper)
    assert len(chunks) > 1
    for c in chunks:
        assert embedder.count_tokens(c.embed_text) <= MAX_TOKENS
    assert "".join(c.text.replace(" ", "") for c in chunks) == blob


def test_long_run_on_sentence_is_split_into_fitting_chunks(chunker, embedder):
    rnd = random.Random(11)
    vocab = ["graph", "neural", "face", "recognition", "attention", "transformer", "landmark", "network"]
    text = " ".join(rnd.choice(vocab) + str(i % 13) for i in range(2000))
    chunks = chunker.chunk_paper(Paper(id="runon", title="Run On", abstract=text))
    assert len(chunks) > 10
    for c in chunks:
        assert embedder.count_tokens(c.embed_text) <= MAX_TOKENS
        # the target is soft: re-joining split pieces with spaces may add a token or two
        assert chunker.n_tokens(c.text) <= chunker.chunk_tokens + 4
    assert " ".join(c.text for c in chunks).split() == text.split()


def test_model_window_is_enforced_even_with_huge_chunk_target(embedder, tmp_path):
    # tiktoken-sized chunks of 200 tokens of rare words exceed 256 wordpieces; the window still holds
    ch = Chunker(200, cache_dir=tmp_path, max_model_tokens=MAX_TOKENS, count_model_tokens=embedder.count_tokens)
    rnd = random.Random(3)
    text = " ".join("".join(rnd.choice("qxzjkv") for _ in range(9)) for _ in range(400))
    assert embedder.count_tokens(text) > MAX_TOKENS
    chunks = ch.chunk_paper(Paper(id="rare", title="Rare", abstract=text))
    for c in chunks:
        assert embedder.count_tokens(c.embed_text) <= MAX_TOKENS
    assert " ".join(c.text for c in chunks).split() == text.split()


# --- chunk ids ------------------------------------------------------------------------------

def test_chunk_ids_are_stable_and_follow_content(chunker, corpus, embedder, tmp_path):
    paper = next(p for p in corpus if len(chunker.chunk_paper(p)) >= 3)
    first = chunker.chunk_paper(paper)
    # same input, same ids - also from a fresh chunker
    again = Chunker(64, cache_dir=tmp_path, max_model_tokens=MAX_TOKENS,
                    count_model_tokens=embedder.count_tokens).chunk_paper(paper)
    assert [c.id for c in again] == [c.id for c in first]

    # change a word in the last chunk only: earlier chunk ids survive, the last changes
    last = first[-1].text
    new_abstract = paper.abstract[: paper.abstract.rindex(last)] + last.replace(" ", " very ", 1)
    edited = chunker.chunk_paper(Paper(id=paper.id, title=paper.title, abstract=new_abstract))
    assert [c.id for c in edited[:-1]] == [c.id for c in first[:-1]]
    assert edited[-1].id != first[-1].id

    # a new title changes every id (the title is embedded with each chunk)
    retitled = chunker.chunk_paper(Paper(id=paper.id, title=paper.title + " v2", abstract=paper.abstract))
    assert not {c.id for c in retitled} & {c.id for c in first}

    # a different chunk size changes the signature and so every id
    other = Chunker(48, cache_dir=tmp_path).chunk_paper(paper)
    assert other and not {c.id for c in other} & {c.id for c in first}


# --- tiktoken offline ------------------------------------------------------------------------

def test_provision_tiktoken_works_offline(tmp_path, monkeypatch):
    import tiktoken
    import tiktoken.registry

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "placeholder")  # so that teardown restores the original
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
    # forget encodings loaded earlier in this process so the cache is really read
    if "cl100k_base" in tiktoken.registry.ENCODINGS:
        monkeypatch.delitem(tiktoken.registry.ENCODINGS, "cl100k_base")

    # the network really is blocked here, so nothing below can download
    with pytest.raises(OSError):
        socket.create_connection(("13.107.246.40", 443), timeout=2)  # a public address

    cache = provision_tiktoken(tmp_path / "tk")
    assert cache == tmp_path / "tk"
    url = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
    cached = cache / hashlib.sha1(url.encode()).hexdigest()
    assert cached.is_file() and cached.stat().st_size > 1_000_000
    assert not list(cache.glob("*.tmp"))

    enc = tiktoken.get_encoding("cl100k_base")
    ids = enc.encode("hello world")
    assert ids == [15339, 1917]
    assert enc.decode(ids) == "hello world"

    before = cached.stat().st_mtime_ns
    provision_tiktoken(tmp_path / "tk")  # idempotent: existing files are left alone
    assert cached.stat().st_mtime_ns == before
