"""The Gradio chat UI: streamed, cited answers beside their sources; a corpus browser.

`create_app(assistant)` builds the `gr.Blocks`; `launch(assistant, host, port, share)` serves
it (127.0.0.1:7860 by default, with a login when RAG_UI_AUTH="user:password").
Only this module imports gradio, so `import rag` stays cheap.

Everything shown in HTML (abstracts, titles, questions, uploaded text, model output) goes
through `html.escape` first; the chatbot additionally sanitises and never renders raw HTML.
The pure helpers (`sources_html`, `paper_html`, `highlight`, `answer_markdown`,
`chat_text`) are what the tests exercise directly. The conversation logic (`Turn`, `Plan`,
`is_elliptical`, `followup`, `condense_question`) lives in `rag.conversation`, shared with
the HTTP API; it is re-exported here.
"""

from __future__ import annotations

import errno
import html
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Offline by default: no telemetry or version check from gradio (must precede its import).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr

from .chunking import split_sentences
from .conversation import Plan, Turn, condense_question, followup, is_elliptical
from .errors import ConfigError, CorpusError, CorpusErrors, LLMError, RagError
from .types import Answer, Context, Paper

log = logging.getLogger(__name__)

__all__ = [
    "EXAMPLES",
    "Plan",
    "Turn",
    "answer_markdown",
    "chat_text",
    "condense_question",
    "create_app",
    "followup",
    "highlight",
    "is_elliptical",
    "launch",
    "paper_html",
    "sources_html",
]

EXAMPLES = [
    "Which paper clusters faces by building clean graphs for GCNs?",
    "Which papers perform face swapping with diffusion models?",
    "What accuracy does FaceNet reach on LFW?",
]
UPLOAD_TYPES = [".jsonl", ".ndjson", ".json", ".csv", ".tsv"]
MAX_TABLE_ROWS = 200
LLM_HINT = ("To answer with an LLM, set OPENAI_API_KEY (or OPENAI_BASE_URL=http://localhost:8000/v1 "
            "for a local OpenAI-compatible server) and restart.")
LOCAL_HINT = ("For a small model on this machine (the 'local' mode), run `make install-local` once "
              "(it compiles llama.cpp: about 10 minutes on 2 cores) and restart.")

CSS = """
#rag-mode { font-size: 0.95em; }
#rag-mode .rag-mode-line { margin: 0; }
#rag-mode .rag-mode-hint { margin: 2px 0 0 0; opacity: 0.75; font-size: 0.9em; }
#rag-scope .rag-scope { padding: 6px 10px; border-radius: 6px; background: var(--color-accent-soft); }
.rag-sources { max-height: 720px; overflow-y: auto; padding-right: 4px; }
.rag-sources .rag-empty { opacity: 0.7; }
.rag-card { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 10px 12px;
            margin: 0 0 10px 0; background: var(--background-fill-secondary); }
.rag-card h4 { margin: 0 0 4px 0; font-size: 1em; line-height: 1.35; }
.rag-card .rag-n { font-weight: 700; margin-right: 4px; color: var(--color-accent); }
.rag-card .rag-meta { font-size: 0.85em; opacity: 0.8; margin-bottom: 6px; }
.rag-card .rag-meta a { margin-right: 6px; }
.rag-card .rag-abstract { font-size: 0.9em; line-height: 1.5; margin: 0; white-space: normal; }
.rag-card mark { background: #fde68a; color: #1f2937; padding: 0 1px; border-radius: 2px; }
.rag-card .rag-snippet { border-left: 3px solid #f59e0b; margin: 0 0 6px 0; padding-left: 8px; font-size: 0.9em; }
.rag-uncited summary { cursor: pointer; font-weight: 600; margin: 6px 0; }
.rag-note { font-size: 0.85em; opacity: 0.8; margin: 0 0 8px 0; }
.rag-errors, .rag-errors p, .rag-errors li, .rag-errors strong { color: #b91c1c; }
.rag-errors li { margin: 2px 0; }
.rag-ok, .rag-ok p, .rag-ok strong { color: #15803d; }
.rag-paper h3 { margin-top: 0; }
"""


# --- escaping and rendering (pure functions) ---------------------------------------------------

def esc(text: Any) -> str:
    """Text for an HTML context: every <, >, &, " and ' escaped."""
    return html.escape("" if text is None else str(text), quote=True)


def safe_url(url: str | None) -> str | None:
    """Only http(s) links are rendered; anything else (javascript:, data:) is dropped."""
    if not url or not isinstance(url, str):
        return None
    url = url.strip()
    return url if re.match(r"^https?://[^\s<>\"']+$", url, re.IGNORECASE) else None


def _link(url: str | None, label: str, cls: str = "") -> str:
    u = safe_url(url)
    if not u:
        return esc(label)
    c = f' class="{cls}"' if cls else ""
    return f'<a href="{esc(u)}" target="_blank" rel="noopener noreferrer nofollow"{c}>{esc(label)}</a>'


def chat_text(text: str) -> str:
    """Text for the chatbot's Markdown: HTML escaped, and brackets escaped so that `[1]`
    stays a literal marker (never a link or link reference)."""
    s = html.escape(text or "", quote=False)
    return s.replace("[", "\\[").replace("]", "\\]")


def _spans(abstract: str, snippet: str) -> list[tuple[int, int]]:
    """Where the snippet's sentences occur in the abstract (whitespace-insensitive)."""
    found: list[tuple[int, int]] = []
    pieces = split_sentences(snippet or "") or ([snippet] if snippet else [])
    for piece in pieces:
        toks = piece.split()
        if not toks or len(piece) < 3:
            continue
        pattern = r"\s+".join(re.escape(t) for t in toks)
        m = re.search(pattern, abstract) or re.search(pattern, abstract, re.IGNORECASE)
        if m:
            found.append(m.span())
    found.sort()
    merged: list[tuple[int, int]] = []
    for a, b in found:
        if merged and (a <= merged[-1][1] or not abstract[merged[-1][1]:a].strip()):
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def highlight(abstract: str, snippet: str | None) -> tuple[str, bool]:
    """The escaped abstract with the snippet's sentences wrapped in <mark>; False if not found."""
    spans = _spans(abstract, snippet or "")
    out, pos = [], 0
    for a, b in spans:
        out.append(esc(abstract[pos:a]))
        out.append(f"<mark>{esc(abstract[a:b])}</mark>")
        pos = b
    out.append(esc(abstract[pos:]))
    return "".join(out), bool(spans)


def _code_links(code_urls: Sequence[str]) -> str:
    links = [_link(u, "code" if i == 0 else f"code {i + 1}", "rag-code") for i, u in enumerate(code_urls)
             if safe_url(u)]
    return " ".join(links)


def _card(ctx: Context, snippet: str | None, cited: bool) -> str:
    body, found = highlight(ctx.abstract, snippet) if cited else (esc(ctx.abstract), False)
    quote = ""
    if cited and snippet and not found:  # the used passage could not be located: show it on its own
        quote = f'<blockquote class="rag-snippet">{esc(snippet)}</blockquote>'
    meta = [f"score {ctx.score:.2f}", f"similarity {ctx.dense:.2f}"]
    code = _code_links(ctx.code_urls)
    meta_html = " · ".join(esc(m) for m in meta) + (f" · {code}" if code else "")
    title = _link(ctx.url, ctx.title)
    return (f'<article class="rag-card" data-paper-id="{esc(ctx.paper_id)}" data-n="{ctx.n}" '
            f'id="rag-src-{ctx.n}"><h4><span class="rag-n">[{ctx.n}]</span> {title}</h4>'
            f'<div class="rag-meta">{meta_html}</div>{quote}<p class="rag-abstract">{body}</p></article>')


def sources_html(answer: Answer | None, note: str | None = None, turn: int = 0) -> str:
    """The sources panel: cited papers (used sentences highlighted), then the others collapsed.
    `turn` (the answer's number in the conversation) is exposed as data-turn for scripts and tests."""
    if answer is None:
        return ('<div class="rag-sources"><p class="rag-empty">Sources appear here: every [n] in an answer '
                'is a paper, with the sentences it used highlighted in its abstract.</p></div>')
    parts = [f'<div class="rag-sources" data-turn="{int(turn)}">']
    if note:
        parts.append(f'<p class="rag-note">{esc(note)}</p>')
    snippets = {c.n: c.snippet for c in answer.citations}
    cited = [c for c in answer.contexts if c.n in snippets]
    others = [c for c in answer.contexts if c.n not in snippets]
    if cited:
        parts.append(f"<h3>Cited ({len(cited)})</h3>")
        parts.extend(_card(c, snippets[c.n], True) for c in cited)
    elif answer.abstained:
        parts.append('<p class="rag-empty">No retrieved paper answers this question.</p>')
    else:
        parts.append('<p class="rag-empty">The answer cites no paper.</p>')
    if others:
        parts.append(f'<details class="rag-uncited"><summary>Retrieved but not cited ({len(others)})</summary>')
        parts.extend(_card(c, None, False) for c in others)
        parts.append("</details>")
    parts.append("</div>")
    return "".join(parts)


def paper_html(paper: Paper | None) -> str:
    if paper is None:
        return '<div class="rag-paper"><p class="rag-empty">Select a paper in the table to read its abstract.</p></div>'
    meta = []
    if paper.authors:
        meta.append(", ".join(paper.authors[:8]) + (" et al." if len(paper.authors) > 8 else ""))
    if paper.year:
        meta.append(str(paper.year))
    meta.append(f"id {paper.id}")
    links = []
    if safe_url(paper.url):
        links.append(_link(paper.url, "paper page"))
    code = _code_links(paper.code_urls)
    if code:
        links.append(code)
    return (f'<div class="rag-paper" data-paper-id="{esc(paper.id)}"><h3>{esc(paper.title)}</h3>'
            f'<p class="rag-meta">{esc(" · ".join(meta))}{" · " + " ".join(links) if links else ""}</p>'
            f'<p class="rag-abstract">{esc(paper.abstract)}</p></div>')


def answer_markdown(answer: Answer) -> str:
    """An answer with its references, as Markdown to copy or download."""
    lines = [f"## {answer.question}", "", answer.text.strip(), ""]
    if answer.citations:
        lines += ["### References", ""]
        for c in answer.citations:
            title = f"[{c.title}]({c.url})" if safe_url(c.url) else c.title
            lines.append(f"- [{c.n}] {title} (`{c.paper_id}`, score {c.score:.2f})")
            if c.snippet:
                lines.append(f"  > {' '.join(c.snippet.split())}")
        lines.append("")
    elif answer.abstained:
        lines += ["_No indexed paper answers this question._", ""]
    lines.append(f"_Mode: {answer.mode}; answered by paper-rag._")
    return "\n".join(lines).rstrip() + "\n"


def mode_html(assistant, mode: str) -> str:
    """The always-visible mode line, with a one-line hint on how to change it."""
    line = f"Mode: {assistant.describe_mode(mode)}"
    if mode == "openai":
        hint = ("Answers are written by the LLM from the retrieved abstracts. "
                "For the offline mode pick 'extractive' under Settings.")
    elif mode == "local":
        hint = "A small model on this machine writes the answer from the chosen passages. " + LLM_HINT
    else:
        modes = assistant.available_modes()
        hint = LLM_HINT if "openai" not in modes else "An LLM is configured: pick 'openai' under Settings."
        if "local" not in modes:
            hint += " " + LOCAL_HINT
    return (f'<div class="rag-mode"><p class="rag-mode-line"><strong>{esc(line)}</strong></p>'
            f'<p class="rag-mode-hint">{esc(hint)}</p></div>')


def available_modes(assistant) -> list[str]:
    return assistant.available_modes()


# --- the app ----------------------------------------------------------------------------------

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
    """gr.Blocks whose launch() defaults come from the assistant's settings: theme and CSS,
    login (ui_auth), upload size limit, no SSR, no monitoring endpoint, no run history."""

    rag_settings = None

    def launch(self, *args, **kwargs):
        s = self.rag_settings
        kwargs.setdefault("css", CSS)
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


def _paper_rows(papers: Sequence[Paper]) -> list[list[Any]]:
    return [[p.title, p.year or "", "yes" if p.code_urls else "", p.id] for p in papers[:MAX_TABLE_ROWS]]


def _count_text(assistant, shown: int | None = None, total_matches: int | None = None) -> str:
    n = assistant.count()
    text = f"**{n}** papers indexed"
    if shown is not None and total_matches is not None:
        text += f" · {total_matches} match" + ("es" if total_matches != 1 else "")
        if shown < total_matches:
            text += f" (first {shown} shown; refine the search)"
    return text


def _error_message(exc: BaseException, mode: str = "extractive") -> str:
    if isinstance(exc, RagError):
        msg = f"**Error:** {chat_text(exc.message)}"
        if exc.hint:
            msg += f"\n\n_Hint: {chat_text(exc.hint)}_"
        if mode == "openai" and isinstance(exc, (LLMError, ConfigError)):
            msg += "\n\n_In this app: open Settings and pick the 'extractive' mode to answer offline._"
        return msg
    return (f"**Unexpected error:** {chat_text(f'{type(exc).__name__}: {exc}')}\n\n"
            "_Hint: the app is still usable; see the server log for details._")


def _upload_errors_html(errors: Sequence[CorpusError], name: str, limit: int = 50) -> str:
    items = []
    for e in errors[:limit]:
        msg = e.message.replace(e.file, Path(e.file).name) if getattr(e, "file", None) else e.message
        items.append(f"<li>{esc(msg)}</li>")
    more = f"<li>... and {len(errors) - limit} more</li>" if len(errors) > limit else ""
    hint = "Fix these lines and upload the file again (the papers already indexed are kept)."
    return (f'<div class="rag-errors"><p><strong>{esc(name)}: {len(errors)} problem(s); nothing was added '
            f'and the papers already indexed are unchanged.</strong></p><ul>{"".join(items)}{more}</ul>'
            f'<p>{esc(hint)}</p></div>')


def create_app(assistant) -> gr.Blocks:
    """The whole UI for one `Assistant`: chat + sources, settings, corpus browser, upload, API."""
    settings = assistant.settings
    default_mode = assistant.mode
    llm_ok = "openai" in assistant.available_modes()
    mode_choices = available_modes(assistant)
    if default_mode not in mode_choices:
        mode_choices.append(default_mode)
    temp_lock = threading.Lock()
    export_dir = settings.data_dir / "exports"  # the only folder the UI writes to

    def paper_by_id(pid: str) -> Paper | None:
        return assistant.paper(pid)

    # --- chat ------------------------------------------------------------------------------
    def respond(question, chat, turns, scope_ids, k, mode, temperature):
        chat = list(chat or [])
        turns = list(turns or [])
        question = (question or "").strip()
        if not question:
            yield gr.update(), chat, gr.update(), turns, gr.update()
            return
        mode = mode if mode in mode_choices else default_mode
        k = int(k) if k else None
        chat.append({"role": "user", "content": chat_text(question)})
        chat.append({"role": "assistant", "content": "_Searching the papers..._"})
        yield "", chat, gr.update(), turns, gr.update()
        scope = [p for p in (paper_by_id(pid) for pid in (scope_ids or [])) if p is not None]
        answer: Answer | None = None
        note = None
        try:
            if mode == "openai":
                _set_temperature(assistant.llm, temperature)
                plan = Plan(question, [p.id for p in scope] or None)
                if turns:
                    chat[-1]["content"] = "_Reading the conversation..._"
                    yield "", chat, gr.update(), turns, gr.update()
                    standalone = condense_question(assistant, turns, question)
                    if standalone != question:
                        plan = Plan(standalone, plan.paper_ids, f"Follow-up, searched as: {standalone}", True)
                if scope:
                    plan.note = "Searched only in: " + ", ".join(p.title for p in scope)
            else:  # extractive, and the small local model: follow-ups are resolved without an LLM
                if mode == "local":
                    _set_temperature(getattr(assistant, "local_llm", None), temperature)
                plan = followup(question, _last_answered(turns), scope)
            note = plan.note
            text = ""
            for item in assistant.stream(plan.question, k=k, mode=mode, paper_ids=plan.paper_ids):
                if isinstance(item, Answer):
                    answer = item
                else:
                    text += item
                    chat[-1]["content"] = chat_text(text)
                    yield "", chat, gr.update(), turns, gr.update()
            if answer is not None and answer.abstained and plan.followup and mode != "openai":
                # The follow-up reading found nothing: answer the question as asked instead.
                retry = assistant.ask(question, k=k, mode=mode)
                if not retry.abstained:
                    answer, note = retry, None
        except Exception as exc:  # every failure becomes a chat message; the app stays usable
            if not isinstance(exc, RagError):
                log.exception("answering %r failed", question)
            chat[-1]["content"] = _error_message(exc, mode)
            yield "", chat, gr.update(), turns, gr.update()
            return
        assert answer is not None
        chat[-1]["content"] = _final_message(answer, note)
        turns.append(Turn(question=question, asked=answer.question,
                          cited_ids=[c.paper_id for c in answer.citations],
                          cited_titles=[c.title for c in answer.citations],
                          answer_text=answer.text, abstained=answer.abstained))
        n_answers = sum(1 for m in chat if m.get("role") == "assistant")
        yield "", chat, sources_html(answer, note, turn=n_answers), turns[-10:], answer

    def _set_temperature(llm, temperature) -> None:
        """The chat model is shared by every session: the slider sets it for later answers."""
        if llm is not None and temperature is not None and hasattr(llm, "temperature"):
            with temp_lock:
                llm.temperature = float(temperature)

    def _final_message(answer: Answer, note: str | None) -> str:
        msg = chat_text(answer.text)
        extra = []
        if answer.invalid_citations:
            extra.append(f"{answer.invalid_citations} citation marker(s) pointing to no retrieved paper were removed.")
        if answer.meta.get("uncited"):
            extra.append("This answer cites no paper, so it could not be checked against the abstracts.")
        if answer.meta.get("notice"):
            extra.append(str(answer.meta["notice"]))
        if note:
            extra.append(note)
        if extra:
            msg += "\n\n" + "\n".join(f"_{chat_text(e)}_  " for e in extra)
        return msg

    def export(answer):
        if not isinstance(answer, Answer):
            return gr.update(value="Ask a question first: the last answer is exported here.", visible=True), \
                gr.update(visible=False)
        md = answer_markdown(answer)
        export_dir.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", answer.question.lower()).strip("-")[:50] or "answer"
        path = export_dir / f"{slug}-{int(time.time() * 1000)}.md"
        path.write_text(md, encoding="utf-8")
        return gr.update(value=md, visible=True), gr.update(value=str(path), visible=True)

    def clear_chat():
        return [], [], sources_html(None), None

    def change_mode(mode):
        return mode_html(assistant, mode or default_mode)

    # --- corpus -----------------------------------------------------------------------------
    def search(query):
        papers = assistant.papers(search=(query or "").strip() or None)
        return _paper_rows(papers), _count_text(assistant, min(len(papers), MAX_TABLE_ROWS), len(papers))

    def open_paper(evt: gr.SelectData):
        row = evt.row_value or []
        pid = str(row[-1]) if row else None
        paper = paper_by_id(pid) if pid else None
        return paper_html(paper), (paper.id if paper else None), gr.update(interactive=paper is not None)

    def ask_about(pid):
        paper = paper_by_id(pid) if pid else None
        if paper is None:
            return gr.update(), gr.update(), [], gr.update(), gr.update()
        return (gr.Tabs(selected="ask"), "What does this paper propose?", [paper.id],
                _scope_html([paper]), gr.Row(visible=True))

    def clear_scope():
        return [], "", gr.Row(visible=False)

    def add_papers(file, query, progress=gr.Progress()):  # noqa: B008 - how gradio injects progress
        if not file:
            return '<p class="rag-empty">Choose a .jsonl or .csv file first.</p>', *search(query)
        path = Path(file if isinstance(file, str) else getattr(file, "name", file))
        name = path.name
        limit = settings.max_upload_mb
        size = path.stat().st_size if path.exists() else 0
        if size > limit * 1024 * 1024:
            msg = (f'<div class="rag-errors"><p><strong>{esc(name)} is {size / 1048576:.1f} MB; the limit is '
                   f'{limit:g} MB (RAG_MAX_UPLOAD_MB). Nothing was added.</strong></p>'
                   '<p>Split the file, or ingest it from the command line with <code>rag ingest FILE</code>.'
                   '</p></div>')
            return msg, *search(query)
        if path.suffix.lower() not in UPLOAD_TYPES:
            msg = (f'<div class="rag-errors"><p><strong>{esc(name)}: unsupported file type. '
                   f'Upload {esc(", ".join(UPLOAD_TYPES))}.</strong></p></div>')
            return msg, *search(query)
        before = assistant.count()

        def waiting(message: str) -> None:  # another ingest (CLI or another upload) holds the index
            try:
                progress(0, desc=message)
            except Exception:  # noqa: BLE001 - progress is cosmetic
                pass

        try:
            report, result = assistant.ingest(
                [path], progress=lambda total=0, desc="", unit="": _Progress(progress, total, desc, unit),
                on_wait=waiting)
        except CorpusErrors as exc:
            return _upload_errors_html(exc.errors, name), *search(query)
        except CorpusError as exc:
            return _upload_errors_html([exc], name), *search(query)
        except RagError as exc:
            return (f'<div class="rag-errors"><p><strong>{esc(exc.message)}</strong></p>'
                    f'<p>{esc(exc.hint)}</p></div>'), *search(query)
        after = assistant.count()
        dup = f"; {len(result.duplicates)} duplicate(s) in the file skipped" if result.duplicates else ""
        if report.duplicates:
            dup += f"; {len(report.duplicates)} already indexed (stored once)"
        msg = (f'<div class="rag-ok"><p><strong>{esc(name)}: {len(report.added)} paper(s) added, '
               f'{len(report.updated)} updated, {report.unchanged} unchanged{esc(dup)}.</strong> '
               f'The index now holds {after} papers (was {before}).</p></div>')
        if report.conflicts:
            items = "".join(f"<li>{esc(issue.describe())}</li>" for issue in report.conflicts[:50])
            msg += (f'<div class="rag-errors"><p><strong>{len(report.conflicts)} paper(s) not added: their id '
                    f'belongs to another indexed paper, which was kept.</strong></p><ul>{items}</ul>'
                    f'<p>Give them ids of their own (or none: one is made from the title), or replace the '
                    f'indexed papers with <code>rag ingest --replace FILE</code>.</p></div>')
        return msg, *search(query)

    # --- the API: same JSON as `rag ask --json` -----------------------------------------------
    def api_ask(question: str, k: int | None = None, mode: str | None = None) -> dict:
        """Answer a question from the indexed abstracts; returns Answer.to_dict() (the CLI's JSON)."""
        if mode not in (None, "", *mode_choices):
            raise gr.Error(f"mode must be one of {', '.join(mode_choices)} (or empty for the default)")
        if k is not None and not 1 <= int(k) <= 50:
            raise gr.Error("k must be between 1 and 50")
        try:
            answer = assistant.ask(question, k=int(k) if k else None, mode=mode or None)
        except RagError as exc:
            raise gr.Error(f"{exc.message} ({exc.hint})" if exc.hint else exc.message) from None
        return answer.to_dict()

    # --- layout ---------------------------------------------------------------------------------
    with RagBlocks(title="paper-rag: ask the papers", analytics_enabled=False, fill_width=True) as demo:
        demo.rag_settings = settings
        turns = gr.State([])
        scope = gr.State([])
        last_answer = gr.State(None)
        selected = gr.State(None)

        gr.Markdown("## Ask the papers\nAnswers quote or cite the indexed abstracts; every `[n]` is a paper "
                    "in the sources panel.")
        mode_box = gr.HTML(mode_html(assistant, default_mode), elem_id="rag-mode")
        with gr.Tabs(selected="ask") as tabs:
            with gr.Tab("Ask", id="ask"):
                with gr.Row(visible=False, elem_id="rag-scope-row") as scope_row:
                    scope_box = gr.HTML("", elem_id="rag-scope")
                    clear_scope_btn = gr.Button("Ask about all papers again", size="sm", scale=0,
                                                min_width=200, elem_id="rag-clear-scope", variant="secondary")
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3, min_width=420):
                        chatbot = gr.Chatbot(
                            label="Conversation", show_label=False, elem_id="rag-chat", height=520,
                            sanitize_html=True, render_markdown=True, allow_tags=False,
                            latex_delimiters=[], buttons=[], feedback_options=None,
                            placeholder="Ask about the indexed papers, or click an example below.",
                        )
                        with gr.Row():
                            msg = gr.Textbox(placeholder="Ask a question about the papers...", show_label=False,
                                             scale=5, lines=1, max_lines=4, elem_id="rag-question",
                                             autofocus=True, submit_btn=False)
                            send = gr.Button("Ask", variant="primary", scale=1, min_width=80, elem_id="rag-ask")
                        with gr.Row():
                            example_btns = [gr.Button(q, size="sm", variant="secondary", elem_classes=["rag-example"])
                                            for q in EXAMPLES]
                        with gr.Accordion("Settings", open=False):
                            k_slider = gr.Slider(1, 20, value=settings.k, step=1, label="Papers retrieved (k)")
                            mode_radio = gr.Radio(mode_choices, value=default_mode, label="Answer mode",
                                                  info=None if llm_ok else "The 'openai' mode needs OPENAI_API_KEY "
                                                  "or OPENAI_BASE_URL.")
                            temp_slider = gr.Slider(0.0, 2.0, value=settings.temperature, step=0.1,
                                                    label="Temperature (LLM mode only)")
                        with gr.Row():
                            export_btn = gr.Button("Export answer as Markdown", size="sm", elem_id="rag-export")
                            clear_btn = gr.Button("New conversation", size="sm")
                        export_box = gr.Code(language="markdown", label="Last answer (Markdown)", visible=False,
                                             interactive=False, elem_id="rag-export-md")
                        export_file = gr.DownloadButton("Download .md", visible=False, size="sm",
                                                        elem_id="rag-export-file")
                    with gr.Column(scale=2, min_width=320):
                        gr.Markdown("### Sources")
                        sources = gr.HTML(sources_html(None), elem_id="rag-sources")
            with gr.Tab("Papers", id="papers"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=3):
                        search_box = gr.Textbox(placeholder="Search titles and abstracts...", show_label=False,
                                                elem_id="rag-search")
                        count_md = gr.Markdown(_count_text(assistant), elem_id="rag-count")
                        table = gr.Dataframe(headers=["Title", "Year", "Code", "ID"], datatype="str",
                                             value=_paper_rows(assistant.papers()), interactive=False,
                                             wrap=True, max_height=460, elem_id="rag-papers",
                                             column_widths=["62%", "8%", "8%", "22%"])
                    with gr.Column(scale=2):
                        paper_box = gr.HTML(paper_html(None), elem_id="rag-paper")
                        ask_paper_btn = gr.Button("Ask about this paper", variant="primary", interactive=False,
                                                  elem_id="rag-ask-paper")
                with gr.Accordion("Add papers", open=True):
                    gr.Markdown(f"Upload a **JSONL**, JSON or **CSV** file with `title` and `abstract` "
                                f"(optional `id`, `url`, `authors`, `year`), at most "
                                f"**{settings.max_upload_mb:g} MB**. A file with any invalid line adds nothing.")
                    upload = gr.File(label="Corpus file", file_types=UPLOAD_TYPES, file_count="single",
                                     type="filepath", elem_id="rag-upload")
                    add_btn = gr.Button("Add to the index", variant="primary", elem_id="rag-add")
                    upload_status = gr.HTML("", elem_id="rag-upload-status")

        # --- events ---------------------------------------------------------------------------
        ask_inputs = [msg, chatbot, turns, scope, k_slider, mode_radio, temp_slider]
        ask_outputs = [msg, chatbot, sources, turns, last_answer]
        msg.submit(respond, ask_inputs, ask_outputs, api_visibility="private")
        send.click(respond, ask_inputs, ask_outputs, api_visibility="private")
        for btn, q in zip(example_btns, EXAMPLES):
            btn.click(lambda q=q: q, None, msg, queue=False, api_visibility="private").then(
                respond, ask_inputs, ask_outputs, api_visibility="private")
        export_btn.click(export, last_answer, [export_box, export_file], api_visibility="private")
        clear_btn.click(clear_chat, None, [chatbot, turns, sources, last_answer], queue=False,
                        api_visibility="private")
        chatbot.clear(lambda: ([], sources_html(None), None), None, [turns, sources, last_answer], queue=False,
                      api_visibility="private")
        mode_radio.change(change_mode, mode_radio, mode_box, queue=False, api_visibility="private")
        clear_scope_btn.click(clear_scope, None, [scope, scope_box, scope_row], queue=False, api_visibility="private")

        search_box.change(search, search_box, [table, count_md], api_visibility="private",
                          trigger_mode="always_last")
        table.select(open_paper, None, [paper_box, selected, ask_paper_btn], api_visibility="private")
        ask_paper_btn.click(ask_about, selected, [tabs, msg, scope, scope_box, scope_row], api_visibility="private")
        add_btn.click(add_papers, [upload, search_box], [upload_status, table, count_md],
                      api_visibility="private")

        demo.load(search, search_box, [table, count_md], api_visibility="private")  # papers added elsewhere
        gr.api(api_ask, api_name="ask")
    # Answers are thread-safe and mostly wait on I/O or ONNX (which releases the GIL).
    demo.queue(default_concurrency_limit=8, max_size=256)
    return demo


def _last_answered(turns: Sequence[Turn]) -> Turn | None:
    return turns[-1] if turns else None


def _scope_html(papers: Sequence[Paper]) -> str:
    names = ", ".join(p.title for p in papers)
    return (f'<div class="rag-scope">Asking about: <strong>{esc(names)}</strong>. Questions search only '
            f'this paper until you click "Ask about all papers again".</div>')


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


def check_port(host: str, port: int) -> int:
    """A busy port or an address this machine cannot bind is a ConfigError naming both,
    before Gradio (which would retry, then raise a bare OSError)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port or None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"cannot serve on host '{host}': the address cannot be resolved ({exc})",
                          "Pass a local address with --host or RAG_UI_HOST, e.g. 127.0.0.1 (this machine only) "
                          "or 0.0.0.0 (every interface).") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is already in use",
                                  f"Stop the program using it, or choose another port with --port N or "
                                  f"RAG_UI_PORT=N (0 = any free port).") from None
            raise ConfigError(f"cannot serve on {host}:{port} ({exc.strerror or exc})",
                              "Choose another address or port with --host/--port (RAG_UI_HOST/RAG_UI_PORT).") from None
    return port
