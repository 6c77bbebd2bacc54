"""Citation markers: parse `[n]`, drop the ones that point at no source, build `Citation`s.

Both answer modes go through here, so the rule "never cite a paper that was not
retrieved" is enforced in exactly one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .text import terms
from .types import Citation, Context

# One plain "[n]" marker, the shape every answer is normalised to (group 1: the number).
MARKER_PATTERN = r"\[(\d{1,3})\]"
MARKER = re.compile(MARKER_PATTERN)

# [1]  [1, 2]  [1,2;3]  [1-3]  [Source 2]  [source 1, 4]
_MARKER_RE = re.compile(
    r"\[\s*(?:sources?\s*)?(\d{1,3}(?:\s*(?:[,;]|[-\u2013])\s*(?:sources?\s*)?\d{1,3})*)\s*\]", re.I
)
_SENTENCE_END_RE = re.compile(r"(?<=[.!?])\s+")


@dataclass
class CheckedText:
    text: str
    cited: list[int]  # valid source numbers, in order of first appearance
    invalid: int  # markers removed because no such source was retrieved


def _expand(group: str) -> list[int]:
    nums: list[int] = []
    for part in re.split(r"\s*[,;]\s*", re.sub(r"(?i)sources?\s*", "", group)):
        if re.fullmatch(r"\d+\s*[-\u2013]\s*\d+", part):
            a, b = (int(x) for x in re.split(r"\s*[-\u2013]\s*", part))
            nums.extend(range(a, b + 1) if 0 <= b - a <= 20 else [a, b])
        elif part.strip().isdigit():
            nums.append(int(part))
    return nums


def check_markers(text: str, n_sources: int) -> CheckedText:
    """Normalise markers to `[n]`, remove those outside 1..n_sources."""
    cited: list[int] = []
    invalid = 0

    def repl(m: re.Match) -> str:
        nonlocal invalid
        keep = []
        for n in _expand(m.group(1)):
            if 1 <= n <= n_sources:
                keep.append(n)
                if n not in cited:
                    cited.append(n)
            else:
                invalid += 1
        return "".join(f"[{n}]" for n in dict.fromkeys(keep))

    # Removing a marker can join its neighbours into a new one ("[7[9]]" -> "[7]"): repeat.
    cleaned, previous = text, None
    while cleaned != previous:
        previous, cleaned = cleaned, _MARKER_RE.sub(repl, cleaned)
    cleaned = re.sub(r"[ \t]+([.,;:!?])", r"\1", cleaned)
    cleaned = re.sub(r"[ \t]{2,}", " ", cleaned)
    return CheckedText(cleaned.strip(), cited, invalid)


def defuse_markers(text: str) -> str:
    """Source text that would read as our citations ('[2]', '[1, 3]', '[Source 3]', '[ 2 ]' in a
    title or an abstract) becomes parenthesised ('(2)', '(1, 3)', '(Source 3)'). The same regex as
    `check_markers`, so whatever it would take for a citation is defused here."""
    def repl(m: re.Match) -> str:
        return "(" + " ".join(m.group(0)[1:-1].split()) + ")"

    # "[7[9]]" -> "[7(9)]": no new marker can appear, so one pass is enough.
    return _MARKER_RE.sub(repl, text)


def markers_in(text: str) -> list[int]:
    return [n for m in _MARKER_RE.finditer(text) for n in _expand(m.group(1))]


def claims(text: str) -> list[tuple[str, list[int]]]:
    """Split an answer into sentences with the source numbers each one cites."""
    out = []
    for sent in _SENTENCE_END_RE.split(text.strip()):
        sent = sent.strip()
        if sent:
            out.append((sent, list(dict.fromkeys(markers_in(sent)))))
    return out


def best_snippet(context: Context, claim: str) -> str:
    """The passage of a cited paper that shares most content words with the claim."""
    if not context.passages:
        return context.abstract[:300]
    want = set(terms(claim))
    return max(context.passages, key=lambda p: (len(want & set(terms(p.text))), p.score)).text


def build_citations(text: str, contexts: list[Context], cited: list[int],
                    snippets: dict[int, str] | None = None) -> list[Citation]:
    by_n = {c.n: c for c in contexts}
    claim_for: dict[int, str] = {}
    for sent, nums in claims(text):
        for n in nums:
            claim_for.setdefault(n, sent)
    out = []
    for n in cited:
        ctx = by_n[n]
        snippet = (snippets or {}).get(n) or best_snippet(ctx, claim_for.get(n, ""))
        out.append(Citation(n=n, paper_id=ctx.paper_id, title=ctx.title, snippet=snippet,
                            score=ctx.score, url=ctx.url))
    return out
