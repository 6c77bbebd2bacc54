"""The chat UI in a real (headless) Chromium: streamed cited answers, follow-ups, untrusted
HTML shown as text, uploads with per-line errors, LLM errors in the chat, and the login.

Debian's chromium is used (`make test` installs it through scripts/ensure-chromium.sh);
every request the page makes to a non-local address is blocked and fails the test.
Screenshots go to test-artifacts/; `UPDATE_SCREENSHOT=1` also refreshes docs/screenshot.png."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import serve_app
from openai_server import Fault, OpenAIServer

from rag import Assistant, Settings

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")]

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
ADA_TITLE = "Ada-NETS: Face Clustering via Adaptive Neighbour Discovery in the Structure Space"
FACENET_TITLE = "FaceNet: A Unified Embedding for Face Recognition and Clustering"
TIMEOUT = 60_000

EVIL_IMG = "<img src=x onerror=alert(1)>"
EVIL_SCRIPT = "<script>alert(2)</script>"
EVIL_PAPER = {
    "id": "zebrafish-xss-probe",
    "title": "Tracking zebrafish fin regeneration <b>probe</b>",
    "abstract": (f"We track zebrafish fin regeneration with dense optical flow over thirty days. {EVIL_IMG} "
                 f"and {EVIL_SCRIPT} appear in this abstract as plain text. The zebrafish fin tracker measures "
                 "regrowth of the caudal fin from daily microscope images."),
    "url": "javascript:alert(3)",
}



@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing: run `bash scripts/ensure-chromium.sh` (make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


class Watch:
    """What the page did that it must not: dialogs (alert) and requests off this machine."""

    def __init__(self):
        self.dialogs: list[str] = []
        self.external: list[str] = []


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    watch = Watch()

    def route(r):
        url = r.request.url
        if url.startswith(("http://127.0.0.1", "http://localhost", "data:", "blob:")):
            return r.continue_()
        watch.external.append(url)
        return r.abort()

    context.route("**/*", route)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT)

    def on_dialog(d):
        watch.dialogs.append(d.message)
        d.dismiss()

    pg.on("dialog", on_dialog)
    pg.watch = watch
    yield pg
    context.close()
    assert watch.dialogs == [], f"a dialog fired: {watch.dialogs}"
    assert watch.external == [], f"the page tried to reach the network: {watch.external}"


def open_app(page, url):
    page.goto(url)
    page.wait_for_selector("#rag-question textarea")


def ask(page, question):
    box = page.locator("#rag-question textarea")
    box.fill(question)
    page.locator("#rag-ask").click()


def bot_messages(page):
    return page.locator("#rag-chat .message.bot, #rag-chat [data-testid='bot']")


def wait_answer(page, n: int):
    """Wait until the n-th answer of the conversation is complete (the sources panel comes last)."""
    page.wait_for_selector(f"#rag-sources .rag-sources[data-turn='{n}']")


def record_chat(page):
    """Record every distinct text of the chat, to see an answer grow while it streams."""
    page.evaluate("""() => {
        window.__chat = [];
        const c = document.querySelector('#rag-chat');
        new MutationObserver(() => {
            const t = c.innerText;
            if (window.__chat[window.__chat.length - 1] !== t) window.__chat.push(t);
        }).observe(c, {childList: true, subtree: true, characterData: true});
    }""")


# --- tests -------------------------------------------------------------------------------------

def test_streamed_answer_with_citations_and_sources(assistant, page, monkeypatch):
    real_stream = assistant.stream

    def slow_stream(*args, **kwargs):  # make the deltas observable one by one
        for item in real_stream(*args, **kwargs):
            time.sleep(0.4)
            yield item

    monkeypatch.setattr(assistant, "stream", slow_stream)
    with serve_app(assistant) as url:
        open_app(page, url)
        assert "offline extractive" in page.locator("#rag-mode").inner_text()
        assert "OPENAI_API_KEY" in page.locator("#rag-mode").inner_text()
        record_chat(page)
        page.get_by_role("button", name="Which paper clusters faces by building clean graphs for GCNs?").click()
        wait_answer(page, 1)
        chat = page.locator("#rag-chat").inner_text()
        assert "Which paper clusters faces by building clean graphs for GCNs?" in chat
        assert "[1]" in chat and "Ada-NETS" in chat
        card = page.locator("#rag-sources .rag-card").first
        assert ADA_TITLE in card.inner_text() and "[1]" in card.inner_text()
        assert "cluster faces by constructing clean graphs for GCNs" in " ".join(card.locator("mark").all_inner_texts())
        assert card.locator("a.rag-code").get_attribute("href") == "https://github.com/damo-cv/Ada-NETS"
        uncited = page.locator("#rag-sources details.rag-uncited")
        assert uncited.count() == 1 and uncited.get_attribute("open") is None  # collapsed

        # several papers: the answer arrives piece by piece
        ask(page, "Which papers perform face swapping with diffusion models?")
        wait_answer(page, 2)
        snapshots = page.evaluate("window.__chat")
        partial = [s for s in snapshots if "Face Swap via Diffusion Model" in s and "DynamicFace" not in s]
        assert partial, "the answer should be shown while it streams"
        assert page.locator("#rag-sources .rag-card").count() >= 2
        # the screenshot shows the last question and its answer beside its sources
        page.set_viewport_size({"width": 1400, "height": page.evaluate("document.body.scrollHeight")})
        page.wait_for_timeout(300)
        page.evaluate("""() => {
            const c = [...document.querySelectorAll('#rag-chat, #rag-chat *')].find(e =>
                e.scrollHeight > e.clientHeight + 5 && /auto|scroll/.test(getComputedStyle(e).overflowY));
            const rows = document.querySelectorAll('#rag-chat .user-row');
            const r = rows[rows.length - 1];
            if (c && r) c.scrollTop += r.getBoundingClientRect().top - c.getBoundingClientRect().top - 8;
        }""")
        page.wait_for_timeout(300)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "answer.png"))
        if os.environ.get("UPDATE_SCREENSHOT") == "1":  # refresh the README's picture on purpose only
            (ROOT / "docs").mkdir(exist_ok=True)
            shutil.copyfile(ARTIFACTS / "answer.png", ROOT / "docs" / "screenshot.png")

        # export as Markdown, with references
        page.locator("#rag-export").click()
        page.wait_for_selector("#rag-export-md")
        page.wait_for_function("() => document.querySelector('#rag-export-md').innerText.includes('References')")
        md = page.locator("#rag-export-md").inner_text()
        assert "## Which papers perform face swapping with diffusion models?" in md
        assert "[1] Face Swap via Diffusion Model" in md
        download = page.locator("#rag-export-file")
        download.wait_for()
        with page.expect_download() as dl:
            download.click()
        saved = ARTIFACTS / "answer.md"
        dl.value.save_as(str(saved))
        assert "### References" in saved.read_text(encoding="utf-8")


def test_followup_question_stays_on_the_same_paper(assistant, page):
    with serve_app(assistant) as url:
        open_app(page, url)
        ask(page, "What accuracy does FaceNet reach on LFW?")
        wait_answer(page, 1)
        assert "99.63%" in page.locator("#rag-chat").inner_text()
        ask(page, "and what datasets did it use?")
        wait_answer(page, 2)
        chat = page.locator("#rag-chat").inner_text()
        second = chat.split("and what datasets did it use?", 1)[1]
        assert "FaceNet" in second and "[1]" in second and "do not answer" not in second
        assert "Follow-up" in second
        cards = page.locator("#rag-sources .rag-card")
        assert FACENET_TITLE in cards.first.inner_text()
        assert "Follow-up" in page.locator("#rag-sources").inner_text()
        assert all(FACENET_TITLE in cards.nth(i).inner_text() for i in range(cards.count())
                   if cards.nth(i).is_visible())


def test_untrusted_html_is_shown_as_text(index_copy, tmp_path, page):
    a = Assistant(Settings(data_dir=index_copy, mode="extractive"))
    f = tmp_path / "evil.jsonl"
    f.write_text(json.dumps(EVIL_PAPER) + "\n", encoding="utf-8")
    report, _ = a.ingest([f])
    assert report.added == ["zebrafish-xss-probe"]
    with serve_app(a) as url:
        open_app(page, url)
        page.get_by_role("tab", name="Papers").click()
        page.locator("#rag-search textarea, #rag-search input").first.fill("zebrafish")
        row = page.locator("#rag-papers [role=gridcell]").filter(has_text="Tracking zebrafish fin regeneration") \
            .filter(visible=True).first
        row.wait_for()
        page.locator("#rag-count").get_by_text("1 match").wait_for()
        assert "<b>probe</b>" in page.locator("#rag-papers").inner_text()
        row.click()
        paper = page.locator("#rag-paper")
        paper.get_by_text("zebrafish fin tracker").wait_for()
        text = paper.inner_text()
        assert EVIL_IMG in text and EVIL_SCRIPT in text and "<b>probe</b>" in text
        assert paper.locator("img, script, b").count() == 0
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "untrusted-paper.png"), full_page=True)
        page.locator("#rag-ask-paper").click()
        page.locator("#rag-scope").get_by_text("Asking about").wait_for()
        assert page.locator("#rag-question textarea").input_value() == "What does this paper propose?"
        page.locator("#rag-ask").click()
        wait_answer(page, 1)
        sources = page.locator("#rag-sources")
        assert "Tracking zebrafish fin regeneration <b>probe</b>" in sources.inner_text()
        assert EVIL_IMG in sources.inner_text() and EVIL_SCRIPT in sources.inner_text()
        assert sources.locator("img, script, b").count() == 0
        assert sources.locator("a[href^='javascript']").count() == 0
        page.screenshot(path=str(ARTIFACTS / "untrusted-sources.png"), full_page=True)
        # the same text quoted in the chat is text too
        ask(page, f"Which paper tracks zebrafish fin regeneration with optical flow and has {EVIL_IMG}?")
        wait_answer(page, 2)
        chat = page.locator("#rag-chat")
        assert EVIL_IMG in chat.inner_text()
        assert chat.locator("img[src='x'], script").count() == 0
        page.wait_for_timeout(500)  # give a would-be onerror handler time to fire
        assert page.evaluate("document.querySelectorAll('img[src=\"x\"]').length") == 0


def test_bad_upload_shows_line_errors_and_keeps_the_index(index_copy, tmp_path, page):
    a = Assistant(Settings(data_dir=index_copy, mode="extractive"))
    before = a.store.count()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([
        json.dumps({"title": "A fine paper about owls", "abstract": "Owls are studied here."}),
        '{"title": "broken json", ',
        json.dumps({"title": "No abstract here"}),
    ]) + "\n", encoding="utf-8")
    good = tmp_path / "good.csv"
    good.write_text("title,abstract\nNocturnal owl tracking with thermal cameras,We track owls at night with "
                    "thermal cameras and count their flights.\n", encoding="utf-8")
    with serve_app(a) as url:
        open_app(page, url)
        page.get_by_role("tab", name="Papers").click()
        count = page.locator("#rag-count")
        assert f"{before} papers indexed" in count.inner_text()

        page.locator("#rag-upload input[type=file]").set_input_files(str(bad))
        page.locator("#rag-upload").get_by_text("bad.jsonl").first.wait_for()
        page.locator("#rag-add").click()
        status = page.locator("#rag-upload-status")
        status.get_by_text("problem(s)").wait_for()
        text = status.inner_text()
        assert "bad.jsonl, line 2: invalid JSON" in text
        assert "bad.jsonl, line 3, field 'abstract': missing or empty abstract" in text
        assert "nothing was added" in text
        assert f"{before} papers indexed" in count.inner_text()
        assert a.store.count() == before
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "upload-errors.png"), full_page=True)
        assert not a.papers(search="owls are studied")

        page.locator("#rag-upload button[aria-label='Clear']").first.click() \
            if page.locator("#rag-upload button[aria-label='Clear']").count() else None
        page.locator("#rag-upload input[type=file]").set_input_files(str(good))
        page.locator("#rag-upload").get_by_text("good.csv").first.wait_for()
        page.locator("#rag-add").click()
        status.get_by_text("1 paper(s) added").wait_for()
        page.wait_for_function(f"() => document.querySelector('#rag-count').innerText.includes('{before + 1} papers')")
        assert a.store.count() == before + 1


def test_upload_size_limit_is_explained(index_copy, tmp_path, page):
    a = Assistant(Settings(data_dir=index_copy, mode="extractive", max_upload_mb=0.001))
    big = tmp_path / "big.jsonl"
    big.write_text(json.dumps({"title": "Big", "abstract": "word " * 600}) + "\n", encoding="utf-8")
    with serve_app(a) as url:
        open_app(page, url)
        page.get_by_role("tab", name="Papers").click()
        assert "0.001 MB" in page.locator("body").inner_text()
        page.locator("#rag-upload input[type=file]").set_input_files(str(big))
        page.get_by_text("exceed the maximum allowed size", exact=False).first.wait_for()
        assert a.store.count() == 119


def test_llm_errors_appear_in_the_chat_and_the_app_stays_usable(built_index, page):
    def reply(messages):
        if "Standalone question:" in messages[-1]["content"]:
            return "What datasets did FaceNet use?"
        return "FaceNet reaches 99.63% accuracy on LFW [1]."

    with OpenAIServer(reply) as srv:
        a = Assistant(Settings(data_dir=built_index, openai_base_url=srv.base_url, llm_model="stub-llm",
                               max_retries=0, request_timeout=10))
        srv.faults = [Fault(status=429)]
        with serve_app(a) as url:
            open_app(page, url)
            assert "stub-llm" in page.locator("#rag-mode").inner_text()
            ask(page, "What accuracy does FaceNet reach on LFW?")
            chat = page.locator("#rag-chat")
            chat.get_by_text("rate limiting").wait_for()
            assert "Hint:" in chat.inner_text() and "OPENAI_BASE_URL" in chat.inner_text()
            assert "pick the 'extractive' mode" in chat.inner_text()
            # still usable: the next question is answered by the LLM, streamed
            ask(page, "What accuracy does FaceNet reach on LFW?")
            wait_answer(page, 2)  # the error was the first reply
            assert "FaceNet reaches 99.63% accuracy on LFW [1]." in chat.inner_text()
            assert FACENET_TITLE in page.locator("#rag-sources .rag-card").first.inner_text()
            # a follow-up is condensed with the history by the LLM before retrieval
            ask(page, "and what datasets did it use?")
            wait_answer(page, 3)
            condense = [r for r in srv.requests if "Standalone question:" in r["body"]["messages"][-1]["content"]]
            assert condense, "the follow-up should be condensed by the LLM"
            assert "What accuracy does FaceNet reach on LFW?" in condense[-1]["body"]["messages"][-1]["content"]
            assert "searched as: What datasets did FaceNet use?" in page.locator("#rag-sources").inner_text()
            # and the offline mode can be picked without restarting
            page.get_by_text("Settings", exact=True).first.click()
            page.get_by_role("radio", name="extractive").check()
            page.locator("#rag-mode").get_by_text("offline extractive").wait_for()


def test_login_is_required_when_configured(built_index, page):
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    a = Assistant(Settings(data_dir=built_index, mode="extractive", ui_auth="alice:wonderland"))
    with serve_app(a) as url:
        page.goto(url)
        page.get_by_text("Login", exact=False).first.wait_for()
        assert page.locator("#rag-question").count() == 0
        assert "Ada-NETS" not in page.content()
        resp = page.request.post(url + "gradio_api/call/ask", data={"data": ["Which paper clusters faces?"]})
        assert resp.status in (401, 403)
        with pytest.raises(AuthenticationError):
            Client(url, verbose=False).predict(question="Which paper clusters faces?", api_name="/ask")
        page.get_by_label("username").fill("alice")
        page.get_by_label("password").fill("wrong")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect", exact=False).first.wait_for()
        page.get_by_label("username").fill("alice")
        page.get_by_label("password").fill("wonderland")
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#rag-question textarea")
        ask(page, "Which paper clusters faces by building clean graphs for GCNs?")
        wait_answer(page, 1)
        assert "[1]" in page.locator("#rag-chat").inner_text()
        client = Client(url, auth=("alice", "wonderland"), verbose=False, download_files=False)
        assert client.predict(question="Which paper clusters faces?", api_name="/ask")["citations"]


def test_markers_lead_to_their_own_answers_sources(assistant, page):
    """Each answer keeps its sources: an older [n] opens that answer's card, scrolls to it and
    flashes it; the evidence sits under the answer, collapsed; the landing page says what the
    corpus is; a new answer hides the previous export."""
    with serve_app(assistant) as url:
        open_app(page, url)
        overview = page.locator("#rag-overview").inner_text()
        assert f"{assistant.count()} papers indexed" in overview and "Frequent title words" in overview
        ask(page, "What accuracy does FaceNet reach on LFW?")
        wait_answer(page, 1)
        page.locator("#rag-export").click()
        page.wait_for_selector("#rag-export-md")
        ask(page, "Which paper clusters faces by building clean graphs for GCNs?")
        wait_answer(page, 2)
        assert not page.locator("#rag-export-md").is_visible()  # no stale export of the first answer
        # both answers' cards exist; the first answer's sit in a collapsed section
        assert page.locator("#rag-src-2-1").count() == 1 and page.locator("#rag-src-1-1").count() == 1
        earlier = page.locator("#rag-sources details.rag-earlier")
        assert earlier.count() == 1 and earlier.get_attribute("open") is None
        assert "facenet" in page.locator("#rag-src-1-1").get_attribute("data-paper-id")
        # the first answer's marker opens its section and flashes FaceNet's card
        first_marker = page.locator('#rag-chat a[href="#rag-src-1-1"]').first
        first_marker.click()
        page.wait_for_function("() => document.querySelector('#rag-src-1-1').classList.contains('rag-flash')")
        assert earlier.get_attribute("open") is not None
        assert page.url.endswith("/")  # the link did not navigate away
        # the evidence: a collapsed block under each answer, quoting the abstract
        chat_text = page.locator("#rag-chat").inner_text()
        assert "Evidence:" in chat_text
        assert "99.63%" in chat_text


def test_followup_offers_to_search_all_papers(assistant, page):
    with serve_app(assistant) as url:
        open_app(page, url)
        ask(page, "What accuracy does FaceNet reach on LFW?")
        wait_answer(page, 1)
        assert not page.locator("#rag-search-all").is_visible()
        ask(page, "and what datasets did it use?")
        wait_answer(page, 2)
        assert page.locator("#rag-search-all").is_visible()
        assert "searched only in the papers cited before" in page.locator("#rag-chat").inner_text()
        page.locator("#rag-search-all").click()
        wait_answer(page, 3)
        last_user = page.locator("#rag-chat .user-row").last.inner_text()
        assert "and what datasets did it use?" in last_user
        assert not page.locator("#rag-search-all").is_visible()


def test_on_a_phone_the_sources_sit_under_the_answer(assistant, browser):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT)
    try:
        with serve_app(assistant) as url:
            open_app(pg, url)
            ask(pg, "What accuracy does FaceNet reach on LFW?")
            wait_answer(pg, 1)
            chat = pg.locator("#rag-chat").bounding_box()
            sources = pg.locator("#rag-sources").bounding_box()
            question = pg.locator("#rag-question").bounding_box()
            settings = pg.get_by_text("Settings").first.bounding_box()
            assert sources["y"] > chat["y"] + chat["height"] - 5  # below the conversation ...
            assert sources["y"] < settings["y"]  # ... and before the settings and the rest
            assert sources["x"] < 40 and sources["width"] > 300  # full width, not a squeezed column
            ARTIFACTS.mkdir(exist_ok=True)
            pg.screenshot(path=str(ARTIFACTS / "phone.png"), full_page=True)
            assert question is not None
    finally:
        context.close()
