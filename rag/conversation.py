"""Conversations without a UI: follow-up questions, condensing, and the reply format the
HTTP API writes (and reads back, since OpenAI clients send earlier turns as plain text).

Used by the Gradio chat (`rag.ui`) and the OpenAI-compatible API (`rag.api`); imports
neither gradio nor a web framework.

- extractive and local modes: `followup()` keeps an elliptical question ("and what
  datasets did it use?") on the papers the previous turn cited, without an LLM;
- openai mode: `condense_question()` has the LLM rewrite it as a standalone question;
- `references_text()` / `split_reply()` write and parse the `References:` list under an
  API answer, and `turns_from_messages()` rebuilds the previous turns from it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from .analysis import named_things
from .planning import short_name
from .text import content_terms
from .types import ABSTAIN_TEXT, Citation, Paper

__all__ = [
    "Plan",
    "Turn",
    "condense_question",
    "followup",
    "is_elliptical",
    "references_text",
    "split_reply",
    "title_key",
    "turns_from_messages",
]

# --- follow-up questions ---------------------------------------------------------------------

_LEAD_RE = re.compile(r"^\s*(?:and|also|but|so|then|ok(?:ay)?|and also)\b[\s,]*", re.IGNORECASE)
_WHAT_ABOUT_RE = re.compile(r"^\s*(?:and\s+)?(?:what|how)\s+about\b", re.IGNORECASE)
_REF_RE = re.compile(
    r"\b(?:it|its|they|them|their|theirs|this paper|that paper|the paper|these papers|those papers|"
    r"this method|that method|this work|that work|this approach|that approach|this model|that model|"
    r"the same paper|the authors)\b|\bthat\s*\??\s*$", re.IGNORECASE)


# "these papers" in a question that carries its own topic means the corpus, not the last answer.
_PLURAL_REF_RE = re.compile(r"\b(?:these|those|the) papers\b", re.IGNORECASE)
_PREPOSITION_RE = re.compile(r"^(on|for|in|with|at|from|using|under|over|against|versus|vs\.?)\s+(.+)$", re.IGNORECASE)


def is_elliptical(question: str) -> bool:
    """A follow-up that leans on the previous turn: short, starts with 'and'/'what about',
    or refers back ('it', 'they', 'this paper', 'that ...'). A full question that says
    'these papers' but names its own topic is not one."""
    q = question.strip()
    if not q:
        return False
    if len(q.split()) <= 3 or _LEAD_RE.match(q) or _WHAT_ABOUT_RE.match(q):
        return True
    refs = [m.group(0) for m in _REF_RE.finditer(q)]
    if not refs:
        return False
    if all(_PLURAL_REF_RE.fullmatch(r) for r in refs) and len(content_terms(_PLURAL_REF_RE.sub(" ", q))) >= 3:
        return False
    return True


def replace_part(previous: str, fragment: str) -> str | None:
    """'What accuracy does FaceNet reach on LFW?' + 'on YouTube Faces' -> the same question on
    YouTube Faces: a prepositional fragment replaces the previous question's phrase with the
    same preposition, a bare name replaces the last thing it named. None when neither fits."""
    frag = fragment.strip().rstrip("?.! ").strip()
    if not frag:
        return None
    prev = previous.strip()
    end = prev[-1] if prev and prev[-1] in "?.!" else ""
    body = prev.rstrip("?.! ")
    m = _PREPOSITION_RE.match(frag)
    if m:
        phrase = re.compile(rf"\b{re.escape(m.group(1))}\s+[^,;?!]+$", re.IGNORECASE)
        found = phrase.search(body)
        return f"{body[:found.start()]}{frag}{end}" if found else None
    names = named_things(body)
    if names and len(frag.split()) <= 5 and named_things(frag):
        last = names[-1]
        at = body.rfind(last)
        return f"{body[:at]}{frag}{body[at + len(last):]}{end}" if at >= 0 else None
    return None


def _name_of(title: str) -> str:
    return short_name(title) or f"\u201c{title}\u201d"


def _substitute(question: str, name: str) -> str:
    """Replace references to 'the paper' by its name ('it' -> 'Ada-NETS')."""
    def repl(m: re.Match) -> str:
        word = m.group(0).lower().strip()
        if word.startswith("that") and not word.startswith("that "):  # a trailing "that?"
            return name + m.group(0)[4:]
        if word in ("its", "their", "theirs"):
            return f"{name}'s"
        return name
    return _REF_RE.sub(repl, question)


@dataclass
class Turn:
    question: str  # as typed
    asked: str  # as searched
    cited_ids: list[str] = field(default_factory=list)
    cited_titles: list[str] = field(default_factory=list)
    answer_text: str = ""
    abstained: bool = False


@dataclass
class Plan:
    question: str  # what is sent to the assistant
    paper_ids: list[str] | None = None
    note: str | None = None  # shown to the user when the question was reinterpreted
    followup: bool = False
    typed: str = ""  # the question as typed (the UI offers to search all papers with it)


def followup(question: str, previous: Turn | None, scope: Sequence[Paper] = ()) -> Plan:
    """Extractive mode: keep the previous turn's topic for an elliptical question by
    restricting retrieval to the papers it cited and naming them in the question.
    `scope` (from "ask about this paper") restricts every question to those papers."""
    q = question.strip()
    if scope:
        ids = [p.id for p in scope]
        asked = _substitute(q, _name_of(scope[0].title)) if len(scope) == 1 else q
        names = ", ".join(p.title for p in scope)
        return Plan(asked, ids, f"Searched only in: {names}" + (f" (as: {asked})" if asked != q else ""))
    if previous is None or not is_elliptical(q):
        return Plan(q)
    body = _LEAD_RE.sub("", q, count=1).strip() or q
    body = _WHAT_ABOUT_RE.sub("", body, count=1).strip() or body
    replaced = replace_part(previous.asked, body)
    if replaced:  # a standalone question again: search everything with it
        return Plan(replaced, None, f"Follow-up, searched as: {replaced}", followup=True, typed=q)
    body = _LEAD_RE.sub("", q, count=1).strip() or q
    if previous.cited_ids and not previous.abstained:
        if len(previous.cited_ids) == 1:
            asked = _substitute(body, _name_of(previous.cited_titles[0]))
            if asked == body and len(body.split()) <= 3:
                asked = f"{previous.asked} {body}"
        else:
            asked = f"{previous.asked} {body}"
        names = ", ".join(_name_of(t) for t in previous.cited_titles)
        return Plan(asked, list(previous.cited_ids), f"Follow-up: searched only in the papers cited before "
                    f"({names}), as: {asked}", followup=True, typed=q)
    asked = f"{previous.asked} {body}"
    return Plan(asked, None, f"Follow-up: searched as: {asked}", followup=True, typed=q)


def _history_text(turns: Sequence[Turn], limit: int = 3) -> str:
    out = []
    for t in list(turns)[-limit:]:
        answer = re.sub(r"\s+", " ", t.answer_text).strip()
        out.append(f"User: {t.question}\nAssistant: {answer[:800]}")
    return "\n".join(out)


def condense_question(assistant, turns: Sequence[Turn], question: str) -> str:
    """openai mode: rewrite a follow-up into a standalone question with the LLM
    (prompt: prompts/condense_question.md)."""
    if not turns:
        return question
    return assistant.condense(_history_text(turns), question)



# --- the reply format of the API, and reading it back --------------------------------------------

REFERENCES_HEADING = "References:"
_REFS_SPLIT_RE = re.compile(r"\n[ \t]*\n[ \t]*References:[ \t]*\n")
_REF_LINE_RE = re.compile(r"^\[(\d{1,3})\]\s+(.+?)(?:,\s+(https?://\S+))?\s*$", re.IGNORECASE)


def _one_line(text: str) -> str:
    return " ".join(str(text or "").split())


def references_text(citations: Sequence[Citation]) -> str:
    """The references under an answer: a blank line, `References:`, then `[n] Title, URL`
    per cited paper (URL left out when there is none). Empty when nothing is cited."""
    if not citations:
        return ""
    lines = []
    for c in citations:
        url = (c.url or "").strip()
        lines.append(f"[{c.n}] {_one_line(c.title)}" + (f", {url}" if url and not re.search(r"\s", url) else ""))
    return f"\n\n{REFERENCES_HEADING}\n" + "\n".join(lines)


def split_reply(content: str) -> tuple[str, list[tuple[int, str, str | None]]]:
    """An answer written by `references_text` -> (answer text, [(n, title, url)]).
    Text without a references list comes back whole, with no references."""
    text = (content or "").replace("\r\n", "\n")
    parts = _REFS_SPLIT_RE.split(text)
    if len(parts) < 2:
        return text.strip(), []
    head, tail = "\n\n".join(parts[:-1]), parts[-1]
    refs = []
    for line in tail.split("\n"):
        m = _REF_LINE_RE.match(line.strip())
        if m:
            refs.append((int(m.group(1)), m.group(2).strip(), m.group(3)))
    if not refs:
        return text.strip(), []
    return head.strip(), refs


def title_key(title: str) -> str:
    """Titles compared case- and whitespace-insensitively."""
    return _one_line(title).casefold()


def turns_from_messages(pairs: Iterable[tuple[str, str]], paper_id_for: Callable[[str], str | None],
                        resolve_followups: bool = True) -> list[Turn]:
    """Earlier (user question, assistant reply) pairs as `Turn`s. The papers a reply cited
    come from its references list (`paper_id_for` maps a title to a paper id; unknown
    titles are skipped). With `resolve_followups`, each earlier question is re-read as
    `followup()` read it then, so a chain of follow-ups keeps its topic."""
    turns: list[Turn] = []
    for question, reply in pairs:
        text, refs = split_reply(reply)
        ids: list[str] = []
        titles: list[str] = []
        for _, title, _ in refs:
            pid = paper_id_for(title)
            if pid and pid not in ids:
                ids.append(pid)
                titles.append(title)
        asked = followup(question, turns[-1] if turns else None).question if resolve_followups else question
        turns.append(Turn(question=question, asked=asked, cited_ids=ids, cited_titles=titles, answer_text=text,
                          abstained=text.strip() == ABSTAIN_TEXT))
    return turns
