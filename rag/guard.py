"""The guard on every generative mode: no sentence a model writes reaches the user before
it has been checked against the retrieved papers.

The model's text is cut into sentences as it streams (`SentenceGuard.feed`); each one is
judged on its own and released, rewritten or withheld:

- markers pointing at no retrieved paper are removed (and counted as invalid citations);
- a sentence some retrieved paper supports (the offline check of `rag/support.py`) is
  shown with that paper's marker: its own marker when a paper it cites supports it (markers
  of cited papers that do not are removed), the supporting paper's marker when it has none
  (*attributed*) or cites a paper that does not support it (*recited*);
- a sentence that states a number (with its unit) or a name that the papers it cites do
  not state (or, without a marker, that no retrieved paper states) is dropped under every
  policy: an invented "FID of 1.00" never reaches the user;
- any other sentence no retrieved paper supports is dropped (`strict`), shown with
  "(unverified)" before its full stop (`flag`), or shown as written (`off`: no support
  check at all; the number rule and the marker check still apply).

What happened is counted in `GuardReport` (`Answer.meta["guard"]`): `kept` + `dropped` =
the sentences judged (fragments without a content word, and the abstain sentence, are
skipped); `attributed`, `recited` and `flagged` are among the kept, `invented` among the
dropped.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .chunking import ABBREV_END
from .citations import MARKER, check_markers
from .support import IdfFn, SupportChecker, missing_specifics, paper_text
from .text import terms
from .types import ABSTAIN_TEXT, Context

GUARD_POLICIES = ("strict", "flag", "off")
FLAG = "(unverified)"

# The end of a sentence in a token stream: end punctuation, any markers, then a space before
# more text; or a line break (list items often have no full stop).
_SENTENCE_END = re.compile(r"[.!?](?:\s*\[[\d,;\s-]+\])*[ \t]*\n\s*(?=\S)|[.!?](?:\s*\[[\d,;\s-]+\])*[ \t]+(?=\S)"
                           r"|\n\s*(?=\S)")
_TRAILING_PUNCT = re.compile(r"([.!?:;,]*)\s*$")


@dataclass
class GuardReport:
    policy: str
    kept: int = 0  # sentences shown
    dropped: int = 0  # sentences withheld
    flagged: int = 0  # shown though no retrieved paper supports them (policy flag)
    attributed: int = 0  # shown with a marker the guard added (the model wrote none)
    recited: int = 0  # shown with other markers than the model wrote (wrong or extra ones replaced or removed)
    invented: int = 0  # withheld because they state a number or name their sources do not (every policy)
    invalid_markers: int = 0  # markers pointing at no retrieved paper, removed

    def meta(self) -> dict[str, int | str]:
        return {"policy": self.policy, "kept": self.kept, "dropped": self.dropped, "flagged": self.flagged,
                "attributed": self.attributed, "recited": self.recited, "invented": self.invented}


def guard_note(meta: dict) -> str | None:
    """One short line for the CLI and the chat from `Answer.meta`: what the guard did, or
    None when it changed nothing (or there was no guard)."""
    g = meta.get("guard")
    if not isinstance(g, dict):
        return None
    parts = []
    dropped, invented = int(g.get("dropped", 0)), int(g.get("invented", 0))
    if dropped:
        part = f"{dropped} sentence{'s' if dropped != 1 else ''} removed"
        if invented:
            part += f" ({invented} stating a number or name the sources do not)"
        parts.append(part)
    if g.get("flagged"):
        parts.append(f"{g['flagged']} not confirmed by the sources, marked {FLAG}")
    fixed = int(g.get("attributed", 0)) + int(g.get("recited", 0))
    if fixed:
        parts.append(f"{fixed} citation{'s' if fixed != 1 else ''} set by the check")
    if meta.get("fallback"):
        why = f" ({'; '.join(parts)})" if parts else ""
        return (f"No sentence of the model's answer was supported by the sources{why}; showing the {meta['fallback']} "
                f"answer.")
    if not parts:
        return None
    return f"Checked against the sources ({g.get('policy')}): " + "; ".join(parts) + "."


def _with_markers(text: str, ns: Sequence[int]) -> str:
    """The sentence without its markers, then `[n]...` before its end punctuation."""
    body = MARKER.sub("", text)
    body = re.sub(r"[ \t]{2,}", " ", body).strip()
    body = re.sub(r"\s+([.,;:!?])", r"\1", body)
    m = _TRAILING_PUNCT.search(body)
    end = m.group(1) if m else ""
    core = body[: m.start()] if m else body
    return f"{core.rstrip()} {''.join(f'[{n}]' for n in ns)}{end}".strip()


def _flagged(text: str) -> str:
    m = _TRAILING_PUNCT.search(text)
    end = m.group(1) if m else ""
    core = text[: m.start()] if m else text
    return f"{core.rstrip()} {FLAG}{end}"


class SentenceGuard:
    """Judges one answer's sentences as they arrive. `contexts` are every retrieved paper
    (numbered as the model saw them), `shown` the ones whose evidence the model was given."""

    def __init__(self, checker: SupportChecker, contexts: Sequence[Context], policy: str = "strict",
                 idf: IdfFn | None = None, shown: Sequence[Context] | None = None):
        if policy not in GUARD_POLICIES:
            raise ValueError(f"unknown guard policy {policy!r}; known: {', '.join(GUARD_POLICIES)}")
        self.checker = checker
        self.contexts = list(contexts)
        self.shown = list(shown) if shown is not None else list(contexts)
        self.by_n = {c.n: c for c in self.contexts}
        self.idf = idf
        self.report = GuardReport(policy)
        self.kept: list[str] = []
        self._buffer = ""

    @property
    def text(self) -> str:
        return "".join(self.kept).strip()

    # --- streaming -------------------------------------------------------------------------
    def feed(self, delta: str) -> Iterator[str]:
        """Take a delta of the model's text; yield what may be shown (whole sentences)."""
        self._buffer += delta
        start = 0
        while (m := _SENTENCE_END.search(self._buffer, start)) is not None:
            sentence = self._buffer[: m.end()]
            if ABBREV_END.search(self._buffer[: m.start() + 1].rstrip()) and "\n" not in m.group(0):
                start = m.end()  # "e.g. " or "et al. " does not end a sentence
                continue
            self._buffer = self._buffer[m.end():]
            start = 0
            yield from self._release(sentence, "\n" if "\n" in m.group(0) else " ")

    def close(self) -> Iterator[str]:
        """The model is done: judge what is left."""
        rest, self._buffer = self._buffer, ""
        if rest.strip():
            yield from self._release(rest, "")

    def _release(self, sentence: str, sep: str) -> Iterator[str]:
        good = self.judge(sentence)
        if good:
            piece = good + sep
            self.kept.append(piece)
            yield piece

    # --- one sentence ----------------------------------------------------------------------
    def judge(self, sentence: str) -> str | None:
        """The sentence as it may be shown, or None (withheld, or nothing to judge)."""
        checked = check_markers(sentence.strip(), max(self.by_n, default=0))
        self.report.invalid_markers += checked.invalid
        text = checked.text.strip()
        body = MARKER.sub(" ", text)
        if not text or text.rstrip(".") == ABSTAIN_TEXT.rstrip(".") or not terms(body):
            return None  # empty, a bare "1. [1]", or the model abstaining inside an answer
        cited = [self.by_n[n] for n in checked.cited if n in self.by_n]
        policy = self.report.policy
        if policy == "off":
            pool = cited or self.shown
            if missing_specifics(text, [paper_text(c) for c in pool]):
                return self._drop(invented=True)
            return self._keep(text)
        others = [c for c in self.contexts if c not in cited]
        j = self.checker.judge(text, cited, others, self.idf)
        if j.supporting:
            keep = [s.n for s in j.supporting]
            if len(keep) < len(cited):  # a cited paper that does not support it loses its marker
                self.report.recited += 1
                return self._keep(_with_markers(text, sorted(keep)))
            return self._keep(text)
        if j.better:
            # No marker, or markers of papers that do not support it: cite the one that does.
            if cited:
                self.report.recited += 1
            else:
                self.report.attributed += 1
            return self._keep(_with_markers(text, [j.better[0].n]))
        pool = cited or self.contexts
        if missing_specifics(text, [paper_text(c) for c in pool]):
            return self._drop(invented=True)
        if policy == "flag":
            self.report.flagged += 1
            return self._keep(_flagged(text))
        return self._drop()

    def _keep(self, text: str) -> str:
        self.report.kept += 1
        return text

    def _drop(self, invented: bool = False) -> str | None:
        self.report.dropped += 1
        self.report.invented += int(invented)
        return None
