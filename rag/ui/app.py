"""The Gradio app: layout and wiring. The logic lives in `rag.ui.chat` (a question's life) and
`rag.conversation` (follow-ups); what is shown in `rag.ui.render`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Offline by default: no telemetry or version check from gradio (must precede its import).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr

from ..errors import ConfigError, CorpusError, CorpusErrors, RagError
from ..ports import check_port
from ..types import Answer, Paper
from . import render as r
from .chat import ChatController, Step, turn_of

log = logging.getLogger(__name__)
HISTORY = 10  # answers whose sources stay reachable from their markers


class _Progress:
    """tqdm-like adapter from the store's progress factory to gr.Progress."""

    def __init__(self, progress, total: int, desc: str = "", unit: str = ""):
        self.progress, self.total, self.desc, self.n = progress, max(int(total or 0), 1), desc, 0
        self.unit = unit or "steps"
        self._report()

    def _report(self) -> None:
        try:
            self.progress((self.n, self.total), desc=self.desc, unit=self.unit)
        except Exception:  # progress is cosmetic, never a reason to fail an ingest
            log.debug("progress update failed", exc_info=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._report()

    def close(self) -> None:
        pass


def _parse_auth(value) -> tuple[str, str] | None:
    if value is None:
        return None
    raw = value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)
    if not raw:
        return None
    user, sep, password = raw.partition(":")
    if not sep or not user or not password:
        raise ConfigError("RAG_UI_AUTH must look like 'user:password'",
                          "Set RAG_UI_AUTH=user:password, or unset it to run without a login.")
    return user, password


class RagBlocks(gr.Blocks):
    """gr.Blocks whose launch() defaults come from the assistant's settings: theme, CSS and
    the marker script, login (ui_auth), upload size limit, no SSR, no monitoring, no run history."""

    rag_settings = None

    def launch(self, *args, **kwargs):
        s = self.rag_settings
        kwargs.setdefault("css", r.CSS)
        kwargs.setdefault("head", r.HEAD_JS)
        kwargs.setdefault("theme", _theme())
        kwargs.setdefault("footer_links", ["api", "settings"])
        kwargs.setdefault("ssr_mode", False)
        kwargs.setdefault("enable_monitoring", False)
        kwargs.setdefault("run_history", False)
        if s is not None:
            if "auth" not in kwargs and len(args) < 6:
                auth = _parse_auth(s.ui_auth)
                if auth:
                    kwargs["auth"] = auth
                    kwargs.setdefault("auth_message", "This paper-rag instance requires a login.")
            kwargs.setdefault("max_file_size", int(s.max_upload_mb * 1024 * 1024))
            # Serve Markdown exports, and nothing else of the data dir (the index stays private).
            exports = s.data_dir / "exports"
            exports.mkdir(parents=True, exist_ok=True)
            kwargs.setdefault("allowed_paths", [str(exports)])
            kwargs.setdefault("blocked_paths", [str(s.chroma_path), str(s.cache_dir)])
        return super().launch(*args, **kwargs)


def _theme():
    """The default theme with fonts gradio ships (no font CDN: the app works offline). Weight 600
    is left out on purpose: gradio ships it as a subset without most capitals."""
    font = [gr.themes.LocalFont("IBM Plex Sans", weights=(400, 700)), "ui-sans-serif", "system-ui", "sans-serif"]
    mono = [gr.themes.LocalFont("IBM Plex Mono", weights=(400, 700)), "ui-monospace", "monospace"]
    return gr.themes.Default(primary_hue="indigo", secondary_hue="amber", font=font, font_mono=mono)


def available_modes(assistant) -> list[str]:
    return assistant.available_modes()


class ChatApp:
    """One app per assistant: handlers as methods, the layout built by `build()`."""

    def __init__(self, assistant):
        self.assistant = assistant
        self.settings = assistant.settings
        self.default_mode = assistant.mode
        self.modes = available_modes(assistant)
        if self.default_mode not in self.modes:
            self.modes.append(self.default_mode)
        self.chat = ChatController(assistant)
        self.export_dir = self.settings.data_dir / "exports"  # the only folder the UI writes to

    # --- chat ------------------------------------------------------------------------------
    def respond(self, question, chat, turns, history, scope_ids, k, mode, temperature, search_all=False):
        """Stream one answer into the chat. Outputs: question box, chat, sources, turns, history,
        last answer, export box, export file, the 'search all papers' row, the typed question."""
        chat, turns, history = list(chat or []), list(turns or []), list(history or [])
        keep = (gr.update(),) * 8
        question = (question or "").strip()
        if not question:
            yield (gr.update(), chat, *keep)
            return
        mode = mode if mode in self.modes else self.default_mode
        turn = sum(1 for m in chat if m.get("role") == "assistant" and not m.get("metadata")) + 1
        chat += [{"role": "user", "content": r.chat_text(question)},
                 {"role": "assistant", "content": "_Searching the papers..._"}]
        hidden = (gr.update(value="", visible=False), gr.update(visible=False), gr.update(visible=False))
        yield ("", chat, gr.update(), gr.update(), gr.update(), gr.update(), *hidden, gr.update())
        scope = [p for p in (self.assistant.paper(pid) for pid in (scope_ids or [])) if p is not None]
        options = {"temperature": float(temperature)} if mode != "extractive" and temperature is not None else None
        step = Step()
        for step in self.chat.run(question, turns, scope, int(k) if k else None, mode, options, search_all):
            if step.answer is None and step.error is None:
                chat[-1]["content"] = f"_{step.status}_" if step.status else r.chat_text(step.text)
                yield ("", chat, *keep)
        if step.error is not None or step.answer is None:
            chat[-1]["content"] = r.error_message(step.error or RuntimeError("no answer"), mode)
            yield ("", chat, *keep)
            return
        answer = step.answer
        chat[-1]["content"] = r.final_message(answer, step.note, turn)
        evidence = r.evidence_message(answer, turn)
        if evidence:
            chat.append(evidence)
        turns.append(turn_of(question, answer))
        earlier = [(t, a, n) for t, a, n in reversed(history)]
        history = (history + [(turn, answer, step.note)])[-HISTORY:]
        followed = bool(step.plan and step.plan.followup)
        yield ("", chat, r.sources_html(answer, step.note, turn, earlier), turns[-HISTORY:], history, answer,
               gr.update(visible=False), gr.update(visible=False), gr.update(visible=followed),
               step.plan.typed if followed and step.plan else "")

    def search_all(self, typed, chat, turns, history, scope_ids, k, mode, temperature):
        yield from self.respond(typed, chat, turns, history, scope_ids, k, mode, temperature, search_all=True)

    def export(self, answer):
        if not isinstance(answer, Answer):
            return gr.update(value="Ask a question first: the last answer is exported here.", visible=True), \
                gr.update(visible=False)
        md = r.answer_markdown(answer)
        self.export_dir.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", answer.question.lower()).strip("-")[:50] or "answer"
        path = self.export_dir / f"{slug}-{int(time.time() * 1000)}.md"
        path.write_text(md, encoding="utf-8")
        return gr.update(value=md, visible=True), gr.update(value=str(path), visible=True)

    # --- corpus -----------------------------------------------------------------------------
    def search(self, query):
        papers = self.assistant.papers(search=(query or "").strip() or None)
        shown = min(len(papers), r.MAX_TABLE_ROWS)
        return r.paper_rows(papers), r.count_text(self.assistant.count(), shown, len(papers))

    def open_paper(self, evt: gr.SelectData):
        row = evt.row_value or []
        pid = str(row[-1]) if row else None
        paper = self.assistant.paper(pid) if pid else None
        return r.paper_html(paper), (paper.id if paper else None), gr.update(interactive=paper is not None)

    def ask_about(self, pid):
        paper = self.assistant.paper(pid) if pid else None
        if paper is None:
            return gr.update(), gr.update(), [], gr.update(), gr.update()
        return (gr.Tabs(selected="ask"), "What does this paper propose?", [paper.id],
                r.scope_html([paper]), gr.Row(visible=True))

    def add_papers(self, file, query, progress=gr.Progress()):  # noqa: B008 - how gradio injects progress
        status = self._ingest_upload(file, progress)
        return status, *self.search(query)

    def _ingest_upload(self, file, progress) -> str:
        if not file:
            return '<p class="rag-empty">Choose a .jsonl or .csv file first.</p>'
        path = Path(file if isinstance(file, str) else getattr(file, "name", file))
        name, limit = path.name, self.settings.max_upload_mb
        size = path.stat().st_size if path.exists() else 0
        if size > limit * 1024 * 1024:
            return (f'<div class="rag-errors"><p><strong>{r.esc(name)} is {size / 1048576:.1f} MB; the limit is '
                    f'{limit:g} MB (RAG_MAX_UPLOAD_MB). Nothing was added.</strong></p>'
                    '<p>Split the file, or ingest it from the command line with <code>rag ingest '
                    'FILE</code>.</p></div>')
        if path.suffix.lower() not in r.UPLOAD_TYPES:
            return (f'<div class="rag-errors"><p><strong>{r.esc(name)}: unsupported file type. '
                    f'Upload {r.esc(", ".join(r.UPLOAD_TYPES))}.</strong></p></div>')
        before = self.assistant.count()

        def waiting(message: str) -> None:  # another ingest (CLI or another upload) holds the index
            try:
                progress(0, desc=message)
            except Exception:  # noqa: BLE001 - progress is cosmetic
                pass

        try:
            report, result = self.assistant.ingest(
                [path], progress=lambda total=0, desc="", unit="": _Progress(progress, total, desc, unit),
                on_wait=waiting)
        except CorpusErrors as exc:
            return r.upload_errors_html(exc.errors, name)
        except CorpusError as exc:
            return r.upload_errors_html([exc], name)
        except RagError as exc:
            return f'<div class="rag-errors"><p><strong>{r.esc(exc.message)}</strong></p><p>{r.esc(exc.hint)}</p></div>'
        dup = f"; {len(result.duplicates)} duplicate(s) in the file skipped" if result.duplicates else ""
        if report.duplicates:
            dup += f"; {len(report.duplicates)} already indexed (stored once)"
        msg = (f'<div class="rag-ok"><p><strong>{r.esc(name)}: {len(report.added)} paper(s) added, '
               f'{len(report.updated)} updated, {report.unchanged} unchanged{r.esc(dup)}.</strong> '
               f'The index now holds {self.assistant.count()} papers (was {before}).</p></div>')
        if report.conflicts:
            items = "".join(f"<li>{r.esc(issue.describe())}</li>" for issue in report.conflicts[:50])
            msg += (f'<div class="rag-errors"><p><strong>{len(report.conflicts)} paper(s) not added: their id '
                    f'belongs to another indexed paper, which was kept.</strong></p><ul>{items}</ul>'
                    f'<p>Give them ids of their own (or none: one is made from the title), or replace the '
                    f'indexed papers with <code>rag ingest --replace FILE</code>.</p></div>')
        return msg

    # --- the API: same JSON as `rag ask --json` -----------------------------------------------
    def api_ask(self, question: str, k: int | None = None, mode: str | None = None) -> dict:
        """Answer a question from the indexed abstracts; returns Answer.to_dict() (the CLI's JSON)."""
        if mode not in (None, "", *self.modes):
            raise gr.Error(f"mode must be one of {', '.join(self.modes)} (or empty for the default)")
        if k is not None and not 1 <= int(k) <= 50:
            raise gr.Error("k must be between 1 and 50")
        try:
            answer = self.assistant.ask(question, k=int(k) if k else None, mode=mode or None)
        except RagError as exc:
            raise gr.Error(f"{exc.message} ({exc.hint})" if exc.hint else exc.message) from None
        return answer.to_dict()

    # --- layout -------------------------------------------------------------------------------
    def build(self) -> gr.Blocks:
        with RagBlocks(title="paper-rag: ask the papers", analytics_enabled=False, fill_width=True) as demo:
            demo.rag_settings = self.settings
            c: dict[str, Any] = {name: gr.State(value) for name, value in
                                 (("turns", []), ("history", []), ("scope", []), ("last_answer", None),
                                  ("selected", None), ("typed", ""))}
            papers = self.assistant.papers()
            gr.Markdown(r.overview_markdown(len(papers), r.corpus_topics(papers.titles())),
                        elem_id="rag-overview")
            c["mode_box"] = gr.HTML(r.mode_html(self.assistant, self.default_mode), elem_id="rag-mode")
            with gr.Tabs(selected="ask") as c["tabs"]:
                with gr.Tab("Ask", id="ask"):
                    self._ask_tab(c)
                with gr.Tab("Papers", id="papers"):
                    self._papers_tab(c, papers)
            self._wire(c, demo)
            gr.api(self.api_ask, api_name="ask")
        # Answers are thread-safe and mostly wait on I/O or ONNX (which releases the GIL).
        demo.queue(default_concurrency_limit=8, max_size=256)
        return demo

    def _ask_tab(self, c: dict[str, Any]) -> None:
        s = self.settings
        with gr.Row(visible=False, elem_id="rag-scope-row") as c["scope_row"]:
            c["scope_box"] = gr.HTML("", elem_id="rag-scope")
            c["clear_scope"] = gr.Button("Ask about all papers again", size="sm", scale=0, min_width=200,
                                         elem_id="rag-clear-scope", variant="secondary")
        with gr.Row(equal_height=False, elem_id="rag-main-row"):
            with gr.Column(scale=3, min_width=420, elem_id="rag-chat-col"):
                c["chatbot"] = gr.Chatbot(
                    label="Conversation", show_label=False, elem_id="rag-chat", height=520,
                    sanitize_html=True, render_markdown=True, allow_tags=False, latex_delimiters=[], buttons=[],
                    feedback_options=None, placeholder="Ask about the indexed papers, or click an example below.")
                with gr.Row(visible=False, elem_id="rag-search-all-row") as c["search_all_row"]:
                    c["search_all"] = gr.Button("Search all papers with the question as typed", size="sm",
                                                variant="secondary", elem_id="rag-search-all")
                with gr.Row():
                    c["msg"] = gr.Textbox(placeholder="Ask a question about the papers...", show_label=False,
                                          scale=5, lines=1, max_lines=4, elem_id="rag-question", autofocus=True,
                                          submit_btn=False)
                    c["send"] = gr.Button("Ask", variant="primary", scale=1, min_width=80, elem_id="rag-ask")
                with gr.Row():
                    c["examples"] = [gr.Button(q, size="sm", variant="secondary", elem_classes=["rag-example"])
                                     for q in r.EXAMPLES]
                with gr.Accordion("Settings", open=False):
                    c["k"] = gr.Slider(1, 20, value=s.k, step=1, label="Papers retrieved (k)")
                    llm_ok = "openai" in self.modes
                    c["mode"] = gr.Radio(self.modes, value=self.default_mode, label="Answer mode",
                                         info=None if llm_ok else "The 'openai' mode needs OPENAI_API_KEY or "
                                         "OPENAI_BASE_URL.")
                    c["temperature"] = gr.Slider(0.0, 2.0, value=s.temperature, step=0.1,
                                                 label="Temperature (LLM modes only; this conversation only)")
                with gr.Row():
                    c["export"] = gr.Button("Export answer as Markdown", size="sm", elem_id="rag-export")
                    c["clear"] = gr.Button("New conversation", size="sm")
                c["export_box"] = gr.Code(language="markdown", label="Last answer (Markdown)", visible=False,
                                          interactive=False, elem_id="rag-export-md")
                c["export_file"] = gr.DownloadButton("Download .md", visible=False, size="sm",
                                                     elem_id="rag-export-file")
            with gr.Column(scale=2, min_width=320, elem_id="rag-sources-col"):
                gr.Markdown("### Sources")
                c["sources"] = gr.HTML(r.sources_html(None), elem_id="rag-sources")

    def _papers_tab(self, c: dict[str, Any], papers: Sequence[Paper]) -> None:
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                c["search_box"] = gr.Textbox(placeholder="Search titles and abstracts...", show_label=False,
                                             elem_id="rag-search")
                c["count"] = gr.Markdown(r.count_text(len(papers)), elem_id="rag-count")
                c["table"] = gr.Dataframe(headers=["Title", "Year", "Code", "ID"], datatype="str",
                                          value=r.paper_rows(papers), interactive=False, wrap=True, max_height=460,
                                          elem_id="rag-papers", column_widths=["62%", "8%", "8%", "22%"])
            with gr.Column(scale=2):
                c["paper_box"] = gr.HTML(r.paper_html(None), elem_id="rag-paper")
                c["ask_paper"] = gr.Button("Ask about this paper", variant="primary", interactive=False,
                                           elem_id="rag-ask-paper")
        with gr.Accordion("Add papers", open=True):
            gr.Markdown(f"Upload a **JSONL**, JSON or **CSV** file with `title` and `abstract` (optional `id`, "
                        f"`url`, `authors`, `year`), at most **{self.settings.max_upload_mb:g} MB**. A file with "
                        f"any invalid line adds nothing.")
            c["upload"] = gr.File(label="Corpus file", file_types=r.UPLOAD_TYPES, file_count="single",
                                  type="filepath", elem_id="rag-upload")
            c["add"] = gr.Button("Add to the index", variant="primary", elem_id="rag-add")
            c["upload_status"] = gr.HTML("", elem_id="rag-upload-status")

    def _wire(self, c: dict[str, Any], demo: gr.Blocks) -> None:
        private: dict[str, Any] = {"api_visibility": "private"}
        state = [c["chatbot"], c["turns"], c["history"], c["scope"], c["k"], c["mode"], c["temperature"]]
        outputs = [c["msg"], c["chatbot"], c["sources"], c["turns"], c["history"], c["last_answer"],
                   c["export_box"], c["export_file"], c["search_all_row"], c["typed"]]
        c["msg"].submit(self.respond, [c["msg"], *state], outputs, **private)
        c["send"].click(self.respond, [c["msg"], *state], outputs, **private)
        c["search_all"].click(self.search_all, [c["typed"], *state], outputs, **private)
        for btn, q in zip(c["examples"], r.EXAMPLES):
            btn.click(lambda q=q: q, None, c["msg"], queue=False, **private).then(
                self.respond, [c["msg"], *state], outputs, **private)
        c["export"].click(self.export, c["last_answer"], [c["export_box"], c["export_file"]], **private)
        reset = [c["chatbot"], c["turns"], c["history"], c["sources"], c["last_answer"], c["search_all_row"]]
        def empty() -> tuple:
            return [], [], [], r.sources_html(None), None, gr.update(visible=False)

        c["clear"].click(empty, None, reset, queue=False, **private)
        c["chatbot"].clear(lambda: empty()[1:], None, reset[1:], queue=False, **private)
        c["mode"].change(lambda m: r.mode_html(self.assistant, m or self.default_mode), c["mode"], c["mode_box"],
                         queue=False, **private)
        c["clear_scope"].click(lambda: ([], "", gr.Row(visible=False)), None,
                               [c["scope"], c["scope_box"], c["scope_row"]], queue=False, **private)
        c["search_box"].change(self.search, c["search_box"], [c["table"], c["count"]], trigger_mode="always_last",
                               **private)
        c["table"].select(self.open_paper, None, [c["paper_box"], c["selected"], c["ask_paper"]], **private)
        c["ask_paper"].click(self.ask_about, c["selected"],
                             [c["tabs"], c["msg"], c["scope"], c["scope_box"], c["scope_row"]], **private)
        c["add"].click(self.add_papers, [c["upload"], c["search_box"]],
                       [c["upload_status"], c["table"], c["count"]], **private)
        demo.load(self.search, c["search_box"], [c["table"], c["count"]], **private)  # papers added elsewhere


def create_app(assistant) -> gr.Blocks:
    """The whole UI for one `Assistant`: chat + sources, settings, corpus browser, upload, API."""
    return ChatApp(assistant).build()


def launch(assistant, host: str | None = None, port: int | None = None, share: bool = False):
    """Serve the UI (blocking). host/port None = settings (127.0.0.1:7860)."""
    settings = assistant.settings
    host = host or settings.ui_host
    port = settings.ui_port if port is None else port
    auth = _parse_auth(settings.ui_auth)
    if host not in ("127.0.0.1", "localhost", "::1") and not auth:
        log.warning("serving on %s without a login (set RAG_UI_AUTH=user:password to require one)", host)
    port = check_port(host, port)
    demo = create_app(assistant)
    return demo.launch(server_name=host, server_port=port or None, share=share)
