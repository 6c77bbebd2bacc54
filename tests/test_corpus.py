"""Corpus loading: the seed text format, JSONL/JSON/CSV, validation errors, duplicates, URLs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import SEED_FILE
from rag.corpus import bundled_corpus_path, find_urls, load_bundled, load_corpus, slugify, write_jsonl
from rag.errors import CorpusError, CorpusErrors

FIRST_TITLE = ("Learning Multi-dimensional Edge Feature-based AU Relation Graph "
               "for Facial Action Unit Recognition")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _jsonl(path: Path, rows: list) -> Path:
    return _write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def _single_error(path: Path) -> CorpusError:
    """Load one file that must yield exactly one located error, and raise it like the CLI does."""
    result = load_corpus([path])
    assert len(result.errors) == 1, [str(e) for e in result.errors]
    with pytest.raises(CorpusError) as info:
        result.raise_for_errors()
    assert info.value is result.errors[0]
    return info.value


def _assert_located(err: CorpusError, path: Path, line: int | None, field: str | None = None) -> None:
    assert err.file == str(path)
    assert str(path) in err.message
    if line is not None:
        assert err.line == line
        assert f"line {line}" in err.message
    if field is not None:
        assert err.field == field
        assert f"field '{field}'" in err.message
    assert err.hint  # every error tells the user how to fix it


# --- the real seed file -------------------------------------------------------------

@pytest.fixture(scope="module")
def seed_result():
    if not SEED_FILE.is_file():
        pytest.skip(f"seed file not available at {SEED_FILE}")
    # The bundled corpus was converted with plain slug ids (`make corpus` still is), which
    # eval/*.jsonl refer to; user files get hashed ids (test_generated_ids_carry_a_title_hash).
    return load_corpus([SEED_FILE], id_scheme="slug")


def test_seed_file_parses_to_119_papers(seed_result):
    assert seed_result.errors == []
    assert seed_result.duplicates == []
    papers = seed_result.papers
    assert len(papers) == 119
    assert papers[0].title == FIRST_TITLE
    assert papers[0].abstract.startswith("The activations of Facial Action Units (AUs)")
    for p in papers:
        assert not p.title.startswith("Subscribe")
        assert "Get trending papers" not in p.title
        assert "Get trending papers" not in p.abstract
        # a title line is short, an abstract line is long: a misaligned pair would show here
        assert len(p.abstract) > len(p.title)


def test_bundled_corpus_equals_fresh_conversion_of_seed(seed_result, tmp_path):
    bundled = load_bundled()
    fresh = seed_result.papers
    assert [p.id for p in bundled] == [p.id for p in fresh]
    assert [p.title for p in bundled] == [p.title for p in fresh]
    assert [p.abstract for p in bundled] == [p.abstract for p in fresh]
    assert [p.code_urls for p in bundled] == [p.code_urls for p in fresh]
    # and the converter writes byte-identical JSONL
    out = tmp_path / "fresh.jsonl"
    assert write_jsonl(fresh, out) == 119
    assert out.read_text(encoding="utf-8") == bundled_corpus_path().read_text(encoding="utf-8")


def test_ids_unique_and_stable_slugs(seed_result):
    papers = seed_result.papers
    ids = [p.id for p in papers]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "learning-multi-dimensional-edge-feature-based-au"
    for p in papers:
        assert p.id == slugify(p.title)  # no collisions in the seed, so every id is the plain slug
        assert len(p.id) <= 48
    again = load_corpus([SEED_FILE], id_scheme="slug").papers
    assert [p.id for p in again] == ids


def test_generated_ids_carry_a_title_hash(seed_result):
    """Without an id, a paper's id is a <=40-character slug plus a hash of its normalised
    title: the same title in any case or punctuation gets the same id, and two titles that
    share their first words (the bundled FaceNet's 48-character slug) never share one."""
    from rag.corpus import generated_id

    hashed = load_corpus([SEED_FILE]).papers
    assert [p.title for p in hashed] == [p.title for p in seed_result.papers]
    for p in hashed:
        slug, _, digest = p.id.rpartition("-")
        assert len(slug) <= 40 and re.fullmatch(r"[0-9a-f]{8}", digest), p.id
        assert p.id == generated_id(p.title)
    assert generated_id("FaceNet: A Unified Embedding") == generated_id("facenet -- a unified EMBEDDING!")
    facenet = "FaceNet: A Unified Embedding for Face Recognition and Clustering"
    lookalike = "FaceNet: A Unified Embedding for Face Recognition and Verification at Web Scale"
    assert slugify(facenet) == slugify(lookalike)  # the old ids collided
    assert generated_id(facenet) != generated_id(lookalike)
    assert not set(p.id for p in hashed) & set(p.id for p in load_bundled())  # no generated id is a bundled id


def test_seed_format_header_and_subscribe_prefix(tmp_path):
    path = _write(tmp_path / "seed.txt",
                  "Get trending papers in your email inbox once a day!\n"
                  "Get trending papers in your email inbox!\n"
                  "\n"
                  "SubscribeFirst Paper Title\n"
                  "First abstract sentence. Second one.\n"
                  "   \n"
                  "Second Paper Title\n"
                  "Second abstract with code at https://github.com/a/b.\n")
    result = load_corpus([path])
    assert result.errors == []
    assert [p.title for p in result.papers] == ["First Paper Title", "Second Paper Title"]
    assert result.papers[0].abstract == "First abstract sentence. Second one."
    assert result.papers[1].code_urls == ("https://github.com/a/b",)


def test_seed_file_with_title_but_no_abstract(tmp_path):
    path = _write(tmp_path / "odd.txt", "Title One\nAbstract one.\nTitle Two\nAbstract two.\nDangling Title\n")
    result = load_corpus([path])
    assert [p.title for p in result.papers] == ["Title One", "Title Two"]
    assert len(result.errors) == 1
    err = result.errors[0]
    _assert_located(err, path, 5, "abstract")
    assert "no abstract" in err.message


# --- JSONL / JSON / CSV loaders ----------------------------------------------------------

def test_jsonl_loader_fields_and_metadata(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [
        {"id": "p1", "title": "  Graph   Nets ", "abstract": "We study graphs.\n  A lot.",
         "url": "https://example.org/p1", "authors": ["Ann Lee", "Bo Chen"], "year": 2021,
         "venue": "CVPR", "tags": ["graphs", "faces"]},
        {"title": "Second Paper", "abstract": "Another abstract.", "authors": "Ann Lee; Bo Chen and Cy Dao",
         "year": " 2019 "},
    ])
    result = load_corpus([path])
    assert result.errors == []
    p1, p2 = result.papers
    assert p1.id == "p1" and p1.title == "Graph Nets" and p1.abstract == "We study graphs. A lot."
    assert p1.url == "https://example.org/p1"
    assert p1.authors == ("Ann Lee", "Bo Chen")
    assert p1.year == 2021
    assert p1.metadata == {"venue": "CVPR", "tags": ["graphs", "faces"]}
    from rag.corpus import generated_id

    assert p2.id == generated_id(p2.title) and p2.id.startswith("second-paper-")
    assert p2.authors == ("Ann Lee", "Bo Chen", "Cy Dao")
    assert p2.year == 2019
    assert p2.url is None and p2.metadata == {}


def test_json_loader_list_and_papers_object(tmp_path):
    rows = [{"title": "Alpha", "abstract": "Alpha abstract.", "doi": "10.1/x"},
            {"title": "Beta", "abstract": "Beta abstract.", "year": "2020"}]
    a = _write(tmp_path / "list.json", json.dumps(rows))
    b = _write(tmp_path / "obj.json", json.dumps({"papers": rows}))
    for path in (a, b):
        result = load_corpus([path])
        assert result.errors == []
        assert [p.title for p in result.papers] == ["Alpha", "Beta"]
        assert result.papers[0].metadata == {"doi": "10.1/x"}
        assert result.papers[1].year == 2020


def test_csv_loader_extra_columns_authors_and_year(tmp_path):
    path = _write(tmp_path / "c.csv",
                  "title,abstract,authors,year,venue\n"
                  "Face Nets,\"Faces, graphs and more.\",\"Ann Lee, Bo Chen\",2018,ICCV\n"
                  "No Year,Plain abstract.,,,\n")
    result = load_corpus([path])
    assert result.errors == []
    p1, p2 = result.papers
    assert p1.abstract == "Faces, graphs and more."
    assert p1.authors == ("Ann Lee", "Bo Chen")
    assert p1.year == 2018
    assert p1.metadata == {"venue": "ICCV"}
    assert p2.year is None and p2.authors == () and p2.metadata == {}


def test_tsv_loader(tmp_path):
    path = _write(tmp_path / "c.tsv", "title\tabstract\nTab Paper\tTabbed, separated abstract.\n")
    result = load_corpus([path])
    assert result.errors == []
    assert result.papers[0].title == "Tab Paper"
    assert result.papers[0].abstract == "Tabbed, separated abstract."


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufefftitle,abstract\nBOM Paper,Abstract é.\n".encode("utf-8"))
    result = load_corpus([path])
    assert result.errors == []
    assert result.papers[0].title == "BOM Paper"


# --- malformed inputs: every error names file, line and field -----------------------------

def test_missing_title(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"title": "Ok", "abstract": "Fine."}, {"abstract": "No title here."}])
    _assert_located(_single_error(path), path, 2, "title")


def test_empty_abstract(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"title": "Empty", "abstract": "   "}])
    err = _single_error(path)
    _assert_located(err, path, 1, "abstract")
    assert "empty abstract" in err.message


def test_invalid_json_line(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"title": "A", "abstract": "a."}, "", '{"title": "B", "abstract": '])
    err = _single_error(path)
    _assert_located(err, path, 3)
    assert "invalid JSON" in err.message


def test_non_object_json_line(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"title": "A", "abstract": "a."}, "[1, 2]"])
    err = _single_error(path)
    _assert_located(err, path, 2)
    assert "JSON object" in err.message


def test_csv_missing_column(tmp_path):
    path = _write(tmp_path / "c.csv", "title,summary\nA,b\n")
    err = _single_error(path)
    _assert_located(err, path, 1, "abstract")
    assert "missing column" in err.message and "summary" in err.message


def test_wrong_encoding_names_the_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    good = json.dumps({"title": "A", "abstract": "a."}).encode()
    bad = '{"title": "Café", "abstract": "Crème brûlée."}'.encode("latin-1")
    path.write_bytes(good + b"\n" + good.replace(b'"A"', b'"B"') + b"\n" + bad + b"\n")
    err = _single_error(path)
    _assert_located(err, path, 3)
    assert "not valid UTF-8" in err.message
    assert "iconv" in err.hint


def test_bad_year(tmp_path):
    path = _write(tmp_path / "c.csv", "title,abstract,year\nA,a.,2020\nB,b.,twenty-one\n")
    err = _single_error(path)
    _assert_located(err, path, 3, "year")
    assert "twenty-one" in err.message


def test_year_forms(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [
        {"title": "A", "abstract": "a.", "year": 2019},
        {"title": "B", "abstract": "b.", "year": "2020"},
        {"title": "C", "abstract": "c.", "year": ""},
        {"title": "D", "abstract": "d.", "year": None},
    ])
    result = load_corpus([path])
    assert result.errors == []
    assert [p.year for p in result.papers] == [2019, 2020, None, None]


def test_year_written_as_float_is_accepted(tmp_path):
    csv_path = _write(tmp_path / "c.csv", "title,abstract,year\nA,a.,2021.0\n")
    json_path = _jsonl(tmp_path / "c.jsonl", [{"title": "B", "abstract": "b.", "year": 2021.0}])
    result = load_corpus([csv_path, json_path])
    assert result.errors == []
    assert [p.year for p in result.papers] == [2021, 2021]


def test_authors_of_wrong_type(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"title": "A", "abstract": "a.", "authors": {"x": 1}}])
    _assert_located(_single_error(path), path, 1, "authors")


def test_unsupported_extension(tmp_path):
    path = _write(tmp_path / "corpus.xml", "<papers/>")
    err = _single_error(path)
    _assert_located(err, path, None)
    assert "unsupported file type '.xml'" in err.message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    err = _single_error(path)
    _assert_located(err, path, None)
    assert "file not found" in err.message


def test_several_errors_raise_corpus_errors(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [
        {"title": "Good", "abstract": "Fine."},
        {"abstract": "no title"},
        "not json",
        {"title": "No abstract"},
    ])
    result = load_corpus([path])
    assert [p.title for p in result.papers] == ["Good"]
    with pytest.raises(CorpusErrors) as info:
        result.raise_for_errors()
    errs = info.value.errors
    assert [(e.line, e.field) for e in errs] == [(2, "title"), (3, None), (4, "abstract")]
    text = str(info.value)
    assert "3 invalid record(s)" in text
    for e in errs:
        assert f"{path}, line {e.line}" in text


def test_duplicate_explicit_id_is_an_error(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"id": "x1", "title": "A", "abstract": "a."},
                                          {"id": "x1", "title": "B", "abstract": "b."}])
    err = _single_error(path)
    _assert_located(err, path, 2, "id")
    assert "already used at" in err.message


def test_explicit_id_colliding_with_earlier_auto_id_is_accepted(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", [{"title": "Deep Learning", "abstract": "First abstract."},
                                          {"id": "deep-learning", "title": "Other", "abstract": "Second abstract."}])
    result = load_corpus([path])
    assert result.errors == []
    ids = [p.id for p in result.papers]
    assert len(ids) == 2 and len(set(ids)) == 2
    assert "deep-learning" in ids


# --- duplicates and ids ---------------------------------------------------------------------

def test_duplicates_are_kept_once_and_reported(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [
        {"title": "Deep Face Graphs", "abstract": "Graphs of faces are studied here."},
        {"title": "deep face-graphs!", "abstract": "A different abstract, same title."},
        {"title": "A Renamed Copy", "abstract": "  graphs of FACES are studied   here. "},
        {"title": "Unique", "abstract": "Something else entirely."},
    ])
    b = _write(tmp_path / "b.csv", "title,abstract\nDEEP FACE GRAPHS,Yet another text.\n")
    result = load_corpus([a, b])
    assert result.errors == []
    assert [p.title for p in result.papers] == ["Deep Face Graphs", "Unique"]
    assert len(result.duplicates) == 3
    assert result.duplicates[0].startswith("a.jsonl:2:")
    assert result.duplicates[1].startswith("a.jsonl:3:")
    assert result.duplicates[2].startswith("b.csv:2:")
    assert all("duplicates deep-face-graphs" in d for d in result.duplicates)


def test_auto_ids_do_not_collide(tmp_path):
    from rag.corpus import generated_id

    long_a = "A Very Long Title About Graph Neural Networks For Faces Version One"
    long_b = "A Very Long Title About Graph Neural Networks For Faces Version Two"
    assert slugify(long_a) == slugify(long_b)  # truncation makes the slugs equal...
    path = _jsonl(tmp_path / "c.jsonl", [{"title": long_a, "abstract": "one."},
                                          {"title": long_b, "abstract": "two."},
                                          # ...and an explicit id may even equal a generated one
                                          {"id": generated_id("Third"), "title": "Other", "abstract": "x."},
                                          {"title": "Third", "abstract": "three."}])
    result = load_corpus([path])
    assert result.errors == []
    ids = [p.id for p in result.papers]
    assert ids[0] != ids[1] and ids[0] == generated_id(long_a) and ids[1] == generated_id(long_b)
    assert ids[2:] == [generated_id("Third"), generated_id("Third") + "-2"]  # the explicit id keeps its paper
    assert [p.id for p in load_corpus([path]).papers] == ids


def test_slugify():
    assert slugify("Ada-NETS: Face Clustering via Adaptive Neighbour") == "ada-nets-face-clustering-via-adaptive-neighbour"
    assert slugify("Café Über Naïve") == "cafe-uber-naive"
    assert slugify("!!!").startswith("paper-")
    assert slugify("!!!") == slugify("!!!") != slugify("???")


# --- code URL extraction -------------------------------------------------------------------

@pytest.mark.parametrize("text, urls", [
    ("Code is available at https://github.com/damo-cv/Ada-NETS.", ("https://github.com/damo-cv/Ada-NETS",)),
    ("Please check our https://github.com/harlanhong/ICCV2023-MCNET{Project}.",
     ("https://github.com/harlanhong/ICCV2023-MCNET",)),
    ("Project page: https://snap-research.github.io/HyperHuman/", ("https://snap-research.github.io/HyperHuman/",)),
    ("See (https://example.org/a_b), then https://example.org/c; and http://x.io/d:",
     ("https://example.org/a_b", "https://example.org/c", "http://x.io/d")),
    ("Twice: https://a.org/x. Again https://a.org/x.", ("https://a.org/x",)),
    ("Released at htthttps://github.com/Wusiwei0410/MMRA.", ("https://github.com/Wusiwei0410/MMRA",)),
    ("No links here, version 3.5.", ()),
])
def test_find_urls(text, urls):
    assert find_urls(text) == urls


def test_code_urls_on_bundled_corpus():
    by_id = {p.id: p for p in load_bundled()}
    assert by_id["ada-nets-face-clustering-via-adaptive-neighbour"].code_urls == ("https://github.com/damo-cv/Ada-NETS",)
    assert by_id["implicit-identity-representation-conditioned"].code_urls == (
        "https://github.com/harlanhong/ICCV2023-MCNET",)
    for p in by_id.values():
        for u in p.code_urls:
            assert not u.endswith((".", ",", ";", ":", "}")), u
            assert "{" not in u


# --- what the file is, checked before it is read ---------------------------------------------------

def _one_error(path) -> CorpusError:
    result = load_corpus([path])
    assert len(result.errors) == 1 and not result.papers, [str(e) for e in result.errors]
    return result.errors[0]


def test_a_fifo_is_refused_without_blocking(tmp_path):
    import os
    import threading

    fifo = tmp_path / "papers.jsonl"
    os.mkfifo(fifo)
    box: list = []
    t = threading.Thread(target=lambda: box.append(_one_error(fifo)), daemon=True)
    t.start()
    t.join(10)
    assert box, "loading a FIFO blocked"  # opening it for reading would wait for a writer forever
    assert "is a FIFO (named pipe), not a regular file" in box[0].message and box[0].hint


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null", "/dev/urandom"])
def test_a_device_is_refused_before_reading(device):
    """In a child process with a memory cap: reading /dev/zero whole would take all memory."""
    import subprocess
    import sys

    if not Path(device).exists():
        pytest.skip(f"{device} missing")
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_DATA, (2 << 30, 2 << 30))\n"
            "from rag.corpus import load_corpus\n"
            "print('|'.join(e.message for e in load_corpus([sys.argv[1]]).errors))\n")
    out = subprocess.run([sys.executable, "-c", code, device], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == f"{device}: is a character device, not a regular file"


def test_a_socket_is_refused(tmp_path):
    import socket

    path = tmp_path / "s.jsonl"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        assert "is a socket" in _one_error(path).message


def test_a_symlink_loop_and_a_broken_link_are_named(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.symlink_to(b)
    b.symlink_to(a)
    err = _one_error(a)
    assert "symlink loop" in err.message and "real file" in err.hint
    dangling = tmp_path / "d.jsonl"
    dangling.symlink_to(tmp_path / "missing.jsonl")
    assert "a symlink to a missing file" in _one_error(dangling).message


def test_an_unreadable_file_is_a_located_error(tmp_path):
    """chmod 000 stops everyone but root; CI runs as root, where a write-only /proc/sys file
    gives a real EACCES on read, through the same code path (stat passes, open fails)."""
    import os

    path = tmp_path / "secret.jsonl"
    path.write_text('{"title": "T", "abstract": "A."}\n')
    path.chmod(0)
    if os.geteuid() == 0:
        path = Path("/proc/sys/vm/compact_memory")
        try:
            path.read_bytes()
            pytest.skip("no file here that root cannot read")
        except PermissionError:
            pass
        except OSError:
            pytest.skip("no write-only /proc/sys file here")
    err = _one_error(path)
    assert "permission denied" in err.message and "chmod u+r" in err.hint


def test_an_absurdly_large_file_is_refused_before_reading(tmp_path):
    from rag.corpus import MAX_FILE_BYTES

    path = tmp_path / "huge.jsonl"
    with path.open("wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk, no memory
    err = _one_error(path)
    assert "the limit is 1 GB" in err.message and "Split" in err.hint


def test_a_file_without_papers_is_an_error(tmp_path):
    for name, text in (("empty.jsonl", ""), ("blank.csv", "title,abstract\n"), ("list.json", "[]"),
                       ("spaces.txt", "\n \n")):
        err = _one_error(_write(tmp_path / name, text))
        assert "no papers found in this file" in err.message, name
