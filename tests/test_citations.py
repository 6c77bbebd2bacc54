"""Citation markers: normalising, dropping invalid ones, claims and Citation objects."""

from __future__ import annotations

import re

import pytest

from rag.citations import best_snippet, build_citations, check_markers, claims, markers_in
from rag.types import Context, Passage

_ANY_MARKER = re.compile(r"\[[^\]]*\]")


def _markers(text: str) -> list[str]:
    return _ANY_MARKER.findall(text)


def _assert_only_valid_markers(text: str, n_sources: int) -> None:
    for m in _markers(text):
        assert re.fullmatch(r"\[\d+\]", m), m
        assert 1 <= int(m[1:-1]) <= n_sources, m


@pytest.mark.parametrize("text, expected_text, cited", [
    ("Graphs help [1, 2].", "Graphs help [1][2].", [1, 2]),
    ("Graphs help [1,2;3].", "Graphs help [1][2][3].", [1, 2, 3]),
    ("Graphs help [1-3].", "Graphs help [1][2][3].", [1, 2, 3]),
    ("Graphs help [1\u20133].", "Graphs help [1][2][3].", [1, 2, 3]),
    ("Graphs help [Source 2].", "Graphs help [2].", [2]),
    ("Graphs help [sources 1, 3].", "Graphs help [1][3].", [1, 3]),
    ("Graphs help [source 1, source 3].", "Graphs help [1][3].", [1, 3]),
    ("A [2] and B [1] and again [2].", "A [2] and B [1] and again [2].", [2, 1]),
    ("Repeated [2, 2].", "Repeated [2].", [2]),
    ("No markers at all.", "No markers at all.", []),
])
def test_check_markers_normalises(text, expected_text, cited):
    checked = check_markers(text, 3)
    assert checked.text == expected_text
    assert checked.cited == cited
    assert checked.invalid == 0


@pytest.mark.parametrize("text, expected_text, cited, invalid", [
    ("Zero is not a source [0].", "Zero is not a source.", [], 1),
    ("Nine is too big [9].", "Nine is too big.", [], 1),
    ("Mixed [1, 9] here.", "Mixed [1] here.", [1], 1),
    ("Range past the end [2-5].", "Range past the end [2][3].", [2, 3], 2),
    ("All bad [0] [4], [Source 7].", "All bad,.", [], 3),
    ("Ok [3] then bad [10] end.", "Ok [3] then bad end.", [3], 1),
])
def test_check_markers_removes_and_counts_invalid(text, expected_text, cited, invalid):
    checked = check_markers(text, 3)
    assert checked.text == expected_text
    assert checked.cited == cited
    assert checked.invalid == invalid
    _assert_only_valid_markers(checked.text, 3)


def test_check_markers_without_sources_removes_everything():
    checked = check_markers("It is known [1]. Also [2-3] and [Source 1].", 0)
    assert checked.cited == []
    assert checked.invalid == 4
    assert _markers(checked.text) == []
    assert checked.text == "It is known. Also and."


@pytest.mark.parametrize("text", [
    "[1][2][3][4][5] start", "x [0-0] y", "a [99, 1-2; Source 4] b", "[3-1] reversed", "[1-100] huge",
    "[source2] glued", "[12] [123]", "[2][2][9]", "[1, 2, 3, 4, 5]",
])
def test_check_markers_never_leaves_an_invalid_marker(text):
    for n_sources in (0, 1, 3):
        checked = check_markers(text, n_sources)
        _assert_only_valid_markers(checked.text, n_sources)
        assert checked.cited == sorted(set(checked.cited), key=checked.cited.index)  # no repeats
        assert all(1 <= n <= n_sources for n in checked.cited)


def test_four_digit_brackets_are_not_markers():
    # a bracketed year is text, not a citation
    checked = check_markers("Published [2021] and cited [1].", 1)
    assert checked.text == "Published [2021] and cited [1]."
    assert checked.cited == [1] and checked.invalid == 0


def test_markers_with_inner_spaces_are_checked():
    checked = check_markers("Claim one [ 1 ]. Claim two [ 2 ]. Claim three [3 ].", 1)
    _assert_only_valid_markers(checked.text, 1)
    assert checked.cited == [1]
    assert checked.invalid == 2


def test_check_markers_is_idempotent():
    once = check_markers("Claim [1, 2]. Other [Source 3] and [7].", 3)
    twice = check_markers(once.text, 3)
    assert twice.text == once.text
    assert twice.cited == once.cited
    assert twice.invalid == 0


def test_markers_in():
    assert markers_in("a [1, 2] b [Source 3] c [2-4] d [x]") == [1, 2, 3, 2, 3, 4]


def test_claims_split_sentences_with_their_markers():
    text = "FaceNet learns embeddings [1]. Ada-NETS clusters faces [2][3]! Is it new? Both help [1, 2]."
    assert claims(text) == [
        ("FaceNet learns embeddings [1].", [1]),
        ("Ada-NETS clusters faces [2][3]!", [2, 3]),
        ("Is it new?", []),
        ("Both help [1, 2].", [1, 2]),
    ]
    assert claims("  ") == []
    assert claims("Same twice [2] and [2].") == [("Same twice [2] and [2].", [2])]


def _ctx(n: int, pid: str, title: str, passages: list[tuple[str, float]], score: float = 0.5,
         url: str | None = None) -> Context:
    return Context(n=n, paper_id=pid, title=title, abstract=" ".join(t for t, _ in passages),
                   score=score, url=url,
                   passages=[Passage(f"{pid}#{i}", t, i, s) for i, (t, s) in enumerate(passages)])


@pytest.fixture
def contexts() -> list[Context]:
    return [
        _ctx(1, "facenet", "FaceNet", [("FaceNet maps faces to a Euclidean space.", 0.4),
                                       ("It uses a triplet loss with online mining.", 0.6)],
             score=0.9, url="https://example.org/facenet"),
        _ctx(2, "ada-nets", "Ada-NETS", [("Ada-NETS builds clean graphs for face clustering.", 0.7),
                                         ("Noise edges pollute GCN features.", 0.2)], score=0.7),
        _ctx(3, "edgeface", "EdgeFace", [("EdgeFace runs on edge devices.", 0.5)], score=0.3),
    ]


def test_build_citations_maps_numbers_to_contexts(contexts):
    text = "Noise edges pollute features in GCNs [2]. FaceNet trains with a triplet loss [1]."
    checked = check_markers(text, len(contexts))
    assert checked.cited == [2, 1]
    cits = build_citations(checked.text, contexts, checked.cited)
    assert [c.n for c in cits] == [2, 1]
    assert [c.paper_id for c in cits] == ["ada-nets", "facenet"]
    assert [c.title for c in cits] == ["Ada-NETS", "FaceNet"]
    assert [c.score for c in cits] == [0.7, 0.9]
    assert cits[1].url == "https://example.org/facenet" and cits[0].url is None
    # the snippet is the passage sharing most words with the citing sentence
    assert cits[0].snippet == "Noise edges pollute GCN features."
    assert cits[1].snippet == "It uses a triplet loss with online mining."


def test_build_citations_uses_given_snippets_and_out_of_order_contexts(contexts):
    shuffled = [contexts[2], contexts[0], contexts[1]]
    cits = build_citations("EdgeFace is small [3]. FaceNet too [1].", shuffled, [3, 1],
                           snippets={3: "given snippet"})
    assert [(c.n, c.paper_id) for c in cits] == [(3, "edgeface"), (1, "facenet")]
    assert cits[0].snippet == "given snippet"
    assert cits[1].snippet in {p.text for p in contexts[0].passages}


def test_best_snippet_falls_back_to_abstract_and_to_score():
    bare = Context(n=1, paper_id="p", title="T", abstract="x" * 500, score=0.1)
    assert best_snippet(bare, "anything") == "x" * 300
    ctx = _ctx(1, "p", "T", [("alpha beta", 0.1), ("gamma delta", 0.9)])
    assert best_snippet(ctx, "nothing in common") == "gamma delta"  # tie on overlap -> higher score
    assert best_snippet(ctx, "alpha is here") == "alpha beta"


# --- marker-like text in sources never becomes a citation -------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("Sparse Attention Revisited [2]", "Sparse Attention Revisited (2)"),
    ("as shown in [Source 3].", "as shown in (Source 3)."),
    ("see [1, 3] and [ 2 ]", "see (1, 3) and (2)"),
    ("ranges [4-5] and [4\u20135]", "ranges (4-5) and (4\u20135)"),
    ("[sources 1, 4]", "(sources 1, 4)"),
    ("nested [7[9]]", "nested [7(9)]"),
    ("not markers: [a], [1234], [x1]", "not markers: [a], [1234], [x1]"),
])
def test_defuse_markers(text, expected):
    from rag.citations import defuse_markers

    out = defuse_markers(text)
    assert out == expected
    assert markers_in(out) == [] and check_markers(out, 99).cited == []


BRACKET_PAPERS = [
    {"id": "sparse-revisited", "title": "Sparse Attention Revisited [2]",
     "abstract": "Sparse attention for face detection keeps 40% of the tokens [1]. We revisit sparse attention "
                 "for face detection and find it matches dense attention [Source 3]."},
    {"id": "quokka-smiles", "title": "Quokka Smile Detection [Source 4]",
     "abstract": "Quokka smile detection reaches 91% accuracy [ 2 ]. As shown in [1, 3], quokka smiles are "
                 "detected with a two-stage network."},
]


@pytest.fixture
def bracket_index(index_copy):
    from rag import Assistant, Settings
    from rag.types import Paper

    a = Assistant(Settings(data_dir=index_copy, mode="extractive"))
    a.ingest(papers=[Paper(**p) for p in BRACKET_PAPERS])
    return index_copy


@pytest.mark.parametrize("question, paper_id", [
    ("Which paper revisits sparse attention for face detection?", "sparse-revisited"),
    ("How accurate is quokka smile detection?", "quokka-smiles"),
])
def test_brackets_in_titles_and_abstracts_are_not_citations_extractive(bracket_index, question, paper_id):
    from rag import Assistant, Settings

    answer = Assistant(Settings(data_dir=bracket_index, mode="extractive")).ask(question)
    assert not answer.abstained
    assert [c.paper_id for c in answer.citations] == [paper_id], answer.text
    cited = {c.n for c in answer.citations}
    assert set(markers_in(answer.text)) == cited, answer.text  # no marker points at an unquoted paper
    assert answer.invalid_citations == 0
    original = next(p for p in BRACKET_PAPERS if p["id"] == paper_id)
    assert answer.citations[0].title == original["title"]  # the sources panel shows the real title
    assert original["title"] not in answer.text  # named in the answer only in its defused form
    if original["title"].split("[")[0].strip() in answer.text:
        assert original["title"].replace("[", "(").replace("]", ")") in answer.text


def test_brackets_in_sources_do_not_reach_the_llm_as_markers(bracket_index):
    """openai mode: the prompt's sources carry no marker-like text, so a model quoting a source
    verbatim cites only the source it quotes."""
    from rag import Assistant, Settings

    from openai_server import OpenAIServer

    prompts: list[str] = []

    def quote_first_source(messages):
        user = messages[-1]["content"]
        prompts.append(user)
        start = user.index(">", user.index("<source ")) + 1
        return user[start:user.index("</source>")].strip() + " [1]"  # the first source, verbatim

    with OpenAIServer(quote_first_source) as srv:
        a = Assistant(Settings(data_dir=bracket_index, openai_base_url=srv.base_url, openai_api_key="sk-test",
                               max_retries=0, request_timeout=20))
        answer = a.ask("Which paper revisits sparse attention for face detection?", paper_ids=["sparse-revisited",
                                                                                               "quokka-smiles"])
    [user] = prompts
    sources = user[user.index("<source "):user.rindex("</source>")]
    assert "(2)" in sources and "(Source 3)" in sources
    assert markers_in(sources) == [] and "[2]" not in sources
    assert [c.n for c in answer.citations] == [1] and answer.invalid_citations == 0, answer.text
    assert answer.citations[0].title == answer.contexts[0].title  # original text kept in the Context


def test_format_sources_defuses_titles_evidence_and_abstracts():
    """The same function builds the local mode's evidence block."""
    from rag.generation import format_sources

    ctx = Context(n=1, paper_id="p", title="Attention [2]", abstract="Full abstract [Source 3].", score=1.0,
                  url=None, code_urls=(), dense=0.9, lexical=1.0, passages=[])
    for text in (format_sources([ctx]), format_sources([ctx], {1: "Evidence sentence [1, 3]."})):
        assert markers_in(text) == [], text
    assert 'title="Attention (2)"' in format_sources([ctx])
    assert "Evidence sentence (1, 3)." in format_sources([ctx], {1: "Evidence sentence [1, 3]."})
