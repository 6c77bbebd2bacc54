"""The UI without a browser: the API endpoint's JSON, the HTML/Markdown helpers, follow-ups,
and that `import rag` stays free of gradio."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, serve_app
from openai_server import Fault, OpenAIServer

from rag import Assistant, Settings
from rag.errors import LLMError
from rag.types import Answer, Citation, Context, Paper

ROOT = Path(__file__).resolve().parents[1]
ADA = "Which paper clusters faces by building clean graphs for GCNs?"
ADA_ID = "ada-nets-face-clustering-via-adaptive-neighbour"

ui = pytest.importorskip("rag.ui")

pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")



@pytest.fixture(scope="module")
def app_url(assistant):
    with serve_app(assistant) as url:
        yield url


# --- the API endpoint ------------------------------------------------------------------------

def test_api_returns_the_cli_json_schema(app_url, assistant):
    from gradio_client import Client

    client = Client(app_url, verbose=False, download_files=False)
    got = client.predict(question=ADA, api_name="/ask")
    want = assistant.ask(ADA).to_dict()
    assert set(got) == set(want)
    assert {"question", "answer", "mode", "abstained", "citations", "retrieved", "timings_ms"} <= set(got)
    assert got["question"] == want["question"] and got["answer"] == want["answer"]
    assert got["mode"] == "extractive" and got["abstained"] is False
    assert got["citations"], "the answer should cite a paper"
    for c in got["citations"]:
        assert {"n", "paper_id", "title", "score", "snippet"} <= set(c)
    assert got["citations"][0]["paper_id"] == ADA_ID
    assert [r["paper_id"] for r in got["retrieved"]] == [r["paper_id"] for r in want["retrieved"]]
    assert re.search(r"\[1\]", got["answer"])


def test_api_takes_k_and_mode(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False, download_files=False)
    got = client.predict(question=ADA, k=2, mode="extractive", api_name="/ask")
    assert len(got["retrieved"]) == 2 and got["mode"] == "extractive"
    info = client.view_api(print_info=False, return_format="dict")
    assert list(info["named_endpoints"]) == ["/ask"], "UI handlers must not be exposed as API endpoints"


def test_api_reports_errors_with_the_hint(app_url):
    from gradio_client import Client

    client = Client(app_url, verbose=False, download_files=False)
    with pytest.raises(Exception, match="question is empty"):
        client.predict(question="   ", api_name="/ask")
    with pytest.raises(Exception, match="mode must be one of extractive"):
        client.predict(question=ADA, mode="bogus", api_name="/ask")


# --- rendering helpers -----------------------------------------------------------------------

EVIL = 'Faces <img src=x onerror=alert(1)> and <script>alert(2)</script> "quoted" & more.'


def make_answer() -> Answer:
    abstract = ("We study face clustering. Graph convolutional networks need clean graphs. "
                "Our method   builds clean graphs\nfor GCNs with adaptive neighbours. It works well.")
    ctx1 = Context(n=1, paper_id="p1", title="Ada <b>NETS</b>", abstract=abstract, score=1.0, dense=0.6,
                   url="https://example.org/p1", code_urls=("https://github.com/x/ada",))
    ctx2 = Context(n=2, paper_id="p2", title="Other paper", abstract=EVIL, score=0.4, dense=0.3,
                   url="javascript:alert(3)")
    cit = Citation(n=1, paper_id="p1", title=ctx1.title, score=1.0, url=ctx1.url,
                   snippet="Our method builds clean graphs for GCNs with adaptive neighbours.")
    return Answer(question="Which method builds clean graphs?",
                  text="\u201cAda\u201d [1]: Our method builds clean graphs [1].",
                  citations=[cit], contexts=[ctx1, ctx2], mode="extractive")


def test_highlight_marks_the_used_sentence_inside_the_full_abstract():
    abstract = "First <sentence>. The used   sentence\nis here. Last one."
    out, found = ui.highlight(abstract, "The used sentence is here.")
    assert found
    assert out == "First &lt;sentence&gt;. <mark>The used   sentence\nis here.</mark> Last one."
    out, found = ui.highlight("Nothing relevant <b>here</b>.", "Something else entirely.")
    assert not found and "<mark>" not in out and "&lt;b&gt;" in out


def test_highlight_merges_adjacent_sentences_and_escapes_inside_marks():
    abstract = "A <x>. B is <y>. C."
    out, found = ui.highlight(abstract, "A <x>. B is <y>.")
    assert found and out == "<mark>A &lt;x&gt;. B is &lt;y&gt;.</mark> C."


def test_sources_panel_cited_cards_then_uncited_collapsed():
    html = ui.sources_html(make_answer())
    cited, _, rest = html.partition("<details")
    assert "[1]</span>" in cited and "Ada &lt;b&gt;NETS&lt;/b&gt;" in cited and "<b>NETS" not in html
    assert "<mark>Our method   builds clean graphs\nfor GCNs with adaptive neighbours.</mark>" in cited
    assert 'href="https://github.com/x/ada"' in cited and ">code<" in cited
    assert "score 1.00" in cited
    assert "Other paper" in rest and "Retrieved but not cited (1)" in rest
    # untrusted text is escaped, unsafe links are not links
    assert "<img" not in html and "<script" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt;script&gt;alert(2)&lt;/script&gt;" in html
    assert "javascript:" not in html


def test_paper_panel_escapes_everything():
    p = Paper(id="xss", title="T <script>alert(1)</script>", abstract=EVIL, url="javascript:alert(1)",
              code_urls=("https://github.com/a/b",), authors=("A <b>B</b>",), year=2024)
    html = ui.paper_html(p)
    assert "<script" not in html and "<img" not in html and "<b>" not in html and "javascript:" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "2024" in html
    assert 'href="https://github.com/a/b"' in html


def test_chat_text_is_escaped_and_keeps_markers_literal():
    s = ui.chat_text('Faces <img src=x onerror=alert(1)> [1]\n[2]: http://x')
    assert "<img" not in s and "&lt;img src=x onerror=alert(1)&gt;" in s
    assert "\\[1\\]" in s and "\n\\[2\\]:" in s  # never a Markdown link or link definition


def test_chat_text_links_markers_to_their_answers_cards():
    s = ui.chat_text("Quoted [1] and [12]. <b>x</b>", turn=3)
    assert "[\\[1\\]](#rag-src-3-1)" in s and "[\\[12\\]](#rag-src-3-12)" in s
    assert "&lt;b&gt;" in s and "<b>" not in s


def test_final_message_shows_the_fallback_notice_and_links_markers():
    a = make_answer()
    a.meta["fallback"] = "extractive"
    msg = ui.final_message(a, "Follow-up: searched as X", turn=2)
    assert "(#rag-src-2-1)" in msg
    assert "not supported by the sources" in msg and "extractive answer" in msg
    assert "Follow-up: searched as X" in msg


def test_evidence_is_a_collapsed_message_of_quoted_sentences():
    from rag.types import Evidence

    a = make_answer()
    assert ui.evidence_message(a, 1) is None  # nothing to show
    a.evidence = [Evidence(1, "p1", "Our method builds <clean> graphs.")]
    m = ui.evidence_message(a, 1)
    assert m["metadata"]["title"].startswith("Evidence: 1 sentence")
    assert "(#rag-src-1-1)" in m["content"] and "&lt;clean&gt;" in m["content"]


def test_sources_keep_earlier_answers_reachable():
    first, second = make_answer(), make_answer()
    html = ui.sources_html(second, None, turn=2, earlier=[(1, first, "a note")])
    assert 'data-turn="2"' in html and 'id="rag-src-2-1"' in html
    assert '<details class="rag-earlier" data-turn="1">' in html and 'id="rag-src-1-1"' in html
    assert html.index('id="rag-src-2-1"') < html.index('id="rag-src-1-1"')  # the latest first


def test_landing_page_names_the_corpus_topics(assistant):
    topics = ui.corpus_topics(p.title for p in assistant.papers())
    assert "face" in topics and len(topics) >= 5
    assert "119" in ui.overview_markdown(119, topics)


def test_markdown_export_contains_answer_and_references():
    md = ui.answer_markdown(make_answer())
    assert md.startswith("## Which method builds clean graphs?")
    assert "Our method builds clean graphs [1]." in md
    assert "### References" in md
    assert "- [1] [Ada <b>NETS</b>](https://example.org/p1) (`p1`, score 1.00)\n" \
           "  > Our method builds clean graphs for GCNs with adaptive neighbours.\n" in md
    assert "Other paper" not in md  # only cited papers are references


def test_mode_banner_names_the_mode_and_how_to_enable_an_llm(assistant):
    html = ui.mode_html(assistant, "extractive")
    assert "offline extractive" in html and "OPENAI_API_KEY" in html and "OPENAI_BASE_URL" in html
    llm = Assistant(Settings(data_dir=assistant.settings.data_dir, openai_base_url="http://127.0.0.1:9/v1",
                             llm_model="my-model"))
    assert "my-model" in ui.mode_html(llm, "openai")
    assert ui.available_modes(assistant)[0] == "extractive" and "openai" not in ui.available_modes(assistant)
    assert ui.available_modes(llm)[:2] == ["extractive", "openai"]


def test_mode_banner_says_how_to_add_the_local_mode_when_it_is_missing(assistant, monkeypatch):
    import rag.local_llm

    monkeypatch.setattr(rag.local_llm, "local_available", lambda settings=None: False)
    html = ui.mode_html(assistant, "extractive")
    assert "local" not in ui.available_modes(assistant) and "make install-local" in html
    monkeypatch.setattr(rag.local_llm, "local_available", lambda settings=None: True)
    assert "make install-local" not in ui.mode_html(assistant, "extractive")


# --- follow-ups ----------------------------------------------------------------------------------

@pytest.mark.parametrize("q,want", [
    ("and what datasets did it use?", True),
    ("What about its code?", True),
    ("Does this paper use transformers?", True),
    ("what about that?", True),
    ("datasets?", True),
    ("Which paper clusters faces by building clean graphs for GCNs?", False),
    ("Which papers perform face swapping with diffusion models?", False),
    ("Which method shows that faces can be clustered with graphs?", False),
])
def test_elliptical_questions(q, want):
    assert ui.is_elliptical(q) is want


def test_followup_restricts_to_previous_paper_and_names_it():
    q = "What accuracy does FaceNet reach on LFW?"
    prev = ui.Turn(question=q, asked=q,
                   cited_ids=["facenet"], cited_titles=["FaceNet: A Unified Embedding for Face Recognition"])
    plan = ui.followup("and what datasets did it use?", prev)
    assert plan.paper_ids == ["facenet"] and plan.followup
    assert plan.question == "what datasets did FaceNet use?"
    several = ui.Turn(question="q", asked="Which papers swap faces?", cited_ids=["a", "b"], cited_titles=["A", "B"])
    plan = ui.followup("and what datasets did they use?", several)
    assert plan.paper_ids == ["a", "b"] and plan.question.startswith("Which papers swap faces?")
    fresh = ui.followup("Which papers perform face swapping with diffusion models?", prev)
    assert fresh.paper_ids is None and not fresh.followup
    abstained = ui.Turn(question="q", asked="Which paper does X?", abstained=True)
    plan = ui.followup("and what about Y?", abstained)
    assert plan.paper_ids is None and plan.question == "Which paper does X? what about Y?"


def test_scope_restricts_every_question():
    p = Paper(id="ada", title="Ada-NETS: Face Clustering", abstract="...")
    plan = ui.followup("What does this paper propose?", None, scope=[p])
    assert plan.paper_ids == ["ada"] and plan.question == "What does Ada-NETS propose?"


def test_followup_answer_comes_from_the_same_paper(assistant):
    first = assistant.ask("What accuracy does FaceNet reach on LFW?")
    prev = ui.Turn(question=first.question, asked=first.question, cited_ids=[c.paper_id for c in first.citations],
                   cited_titles=[c.title for c in first.citations])
    plan = ui.followup("and what datasets did it use?", prev)
    answer = assistant.ask(plan.question, paper_ids=plan.paper_ids)
    assert not answer.abstained
    assert {c.paper_id for c in answer.citations} == set(prev.cited_ids)
    assert "LFW" in answer.text or "Labeled Faces in the Wild" in answer.text


def _condense_reply(messages):
    text = messages[-1]["content"]
    if "Standalone question:" in text:
        return "What datasets did FaceNet use?"
    return "FaceNet is evaluated on LFW and YouTube Faces DB [1]."


def test_openai_mode_condenses_history_with_the_prompt_file(built_index):
    with OpenAIServer(_condense_reply) as srv:
        a = Assistant(Settings(data_dir=built_index, openai_base_url=srv.base_url, max_retries=0))
        turns = [ui.Turn(question="What accuracy does FaceNet reach on LFW?", asked="same",
                         answer_text="FaceNet reaches 99.63% on LFW [1].")]
        q = ui.condense_question(a, turns, "and what datasets did it use?")
        assert q == "What datasets did FaceNet use?"
        prompt = srv.requests[-1]["body"]["messages"][-1]["content"]
        assert "User: What accuracy does FaceNet reach on LFW?" in prompt
        assert "Assistant: FaceNet reaches 99.63% on LFW [1]." in prompt
        assert "Follow-up question: and what datasets did it use?" in prompt
        assert ui.condense_question(a, [], "standalone?") == "standalone?"  # no history: no LLM call
        srv.faults = [Fault(status=500)]
        with pytest.raises(LLMError, match="HTTP 500"):
            ui.condense_question(a, turns, "and it?")


# --- packaging --------------------------------------------------------------------------------

def test_importing_rag_does_not_import_gradio():
    code = ("import rag, sys; from rag import Assistant; import rag.cli; "
            "assert 'gradio' not in sys.modules, 'gradio imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


def test_launch_reads_host_port_and_auth_from_settings(monkeypatch, built_index):
    calls = {}

    def fake_launch(self, *args, **kwargs):
        calls.update(kwargs)

    monkeypatch.setattr(ui.gr.Blocks, "launch", fake_launch)
    a = Assistant(Settings(data_dir=built_index, ui_auth="alice:s3cret:x", max_upload_mb=2))
    ui.launch(a)
    assert calls["server_name"] == "127.0.0.1" and calls["server_port"] == 7860 and calls["share"] is False
    assert calls["auth"] == ("alice", "s3cret:x")
    assert calls["max_file_size"] == 2 * 1024 * 1024
    ui.launch(a, host="127.0.0.2", port=9999)
    assert calls["server_name"] == "127.0.0.2" and calls["server_port"] == 9999
    bad = Assistant(Settings(data_dir=built_index, ui_auth="nocolon"))
    with pytest.raises(Exception, match="user:password"):
        ui.launch(bad)


@pytest.mark.slow
def test_app_py_serves_on_localhost(built_index, tmp_path):
    """`make run` = `python app.py`: index present -> serves the UI on RAG_UI_HOST/PORT."""
    data = tmp_path / "data"
    shutil.copytree(built_index, data)
    port = free_port()
    env = {**os.environ, "RAG_DATA_DIR": str(data), "RAG_UI_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"app.py exited: {proc.stdout.read()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    assert r.status == 200 and b"<html" in r.read().lower()
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("app.py did not start serving within 120 s")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
