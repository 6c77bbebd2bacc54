"""Writing the extractive answer from a plan: the answer first, the evidence apart.

The words are the abstracts' own, trimmed to the clause that answers, plus fixed
connectives ("Two papers:", the paper's name); each paper's clause is cited once.
The full sentences behind each clause become `Answer.evidence`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .citations import defuse_markers as defuse
from .planning import AnswerPlan, PaperEvidence, Sentence, short_name
from .text import terms
from .types import Evidence

_COUNT_WORDS = {1: "One", 2: "Two", 3: "Three", 4: "Four", 5: "Five", 6: "Six"}
# Openers that frame a sentence rather than state anything.
_LEAD_IN = re.compile(
    r"^(?:(?:in|within) (?:this|the present|our) (?:paper|work|study|letter|article)\s*,?\s*"
    r"|here\s*,\s*|to this end\s*,\s*|specifically\s*,\s*|moreover\s*,\s*|furthermore\s*,\s*|additionally\s*,\s*"
    r"|in addition\s*,\s*|finally\s*,\s*|however\s*,\s*|thus\s*,\s*|therefore\s*,\s*|as a result\s*,\s*"
    r"|consequently\s*,\s*|overall\s*,\s*|notably\s*,\s*|besides\s*,\s*|meanwhile\s*,\s*|importantly\s*,\s*"
    r"|to (?:address|tackle|solve|overcome|alleviate|mitigate) (?:this|these|the above|such)(?: \w+){0,2}\s*,\s*)",
    re.I)
# A leading subordinate clause ("Although ..., ", "To address this, ", "Inspired by ..., ") that
# may go when it carries nothing the question asked about: the main clause stays true alone.
_LEAD_CLAUSE = re.compile(r"^(?:although|though|while|whereas|despite|unlike|in contrast to|inspired by|motivated by|"
                          r"to (?:address|tackle|solve|overcome|alleviate|mitigate|this end|achieve|do so)|in order to|"
                          r"given|since|as)\b[^,;]{3,160},\s+(?=[a-z])", re.I)
# A trailing elaboration that may go when it carries nothing the question asked about.
_TAIL = re.compile(r",\s+(?:which|thus|thereby|leading|making|resulting|enabling|allowing|demonstrating|"
                   r"showing|yielding|outperforming|while|whereas|and thus|and therefore)\b")


@dataclass
class Composed:
    text: str
    lines: list[str]
    evidence: list[Evidence]
    snippets: dict[int, str]


def display_name(title: str) -> str:
    return short_name(title) or title


def _carries(part: str, keep: set[str], names: tuple[str, ...]) -> bool:
    """Does this part of a sentence hold a number, a question term or a name?"""
    return any(ch.isdigit() for ch in part) or bool(set(terms(part)) & keep) or \
        any(n.lower() in part.lower() for n in names)


def trim(sentence: Sentence, keep: set[str], names: tuple[str, ...]) -> str:
    """The sentence without framing openers and without a trailing elaboration that holds
    none of the question's terms, names or numbers (cutting there keeps it true)."""
    text = sentence.text.strip()
    text = _LEAD_IN.sub("", text, count=1).strip() or text
    head = _LEAD_CLAUSE.match(text)
    if head and not _carries(head.group(0), keep, names) and len(text[head.end():].split()) >= 6:
        text = text[head.end():]
    for m in reversed(list(_TAIL.finditer(text))):
        if _carries(text[m.start():], keep, names):
            break
        if len(text[: m.start()].split()) < 6:
            break
        text = text[: m.start()]
    text = text.rstrip(" ,;:~")
    if text and text[-1] not in ".!?":
        text += "."
    return text[:1].upper() + text[1:]


def _clause(p: PaperEvidence, plan: AnswerPlan) -> str:
    """The paper's sentences, trimmed, in quotation marks: they are the abstract's words."""
    keep = set(plan.analysis.terms)
    return "\u201c" + " ".join(defuse(trim(s, keep, plan.analysis.names)) for s in p.sentences) + "\u201d"


def compose(plan: AnswerPlan) -> Composed:
    """Plan -> answer lines (reading order = marker order) and their evidence."""
    kind = plan.analysis.answer_type
    papers = plan.papers
    lines: list[str] = []
    if len(papers) == 1:
        p = papers[0]
        n = p.context.n
        if kind == "paper":
            lines.append(f"**{defuse(p.context.title)}** [{n}]: {_clause(p, plan)}")
        else:
            name = short_name(p.context.title)
            body = _clause(p, plan)
            lines.append(f"**{defuse(name)}** [{n}]: {body}" if name else f"{body} [{n}]")
    else:
        count = _COUNT_WORDS.get(len(papers), str(len(papers)))
        if kind == "comparison":
            lines.append(f"{count} papers compared:")
        else:
            lines.append(f"{count} papers:")
        for p in papers:
            lines.append(f"- **{defuse(display_name(p.context.title))}** [{p.context.n}]: {_clause(p, plan)}")
    evidence = [Evidence(n=p.context.n, paper_id=p.context.paper_id, sentence=s.text)
                for p in papers for s in sorted(p.sentences, key=lambda s: s.index)]
    snippets = {p.context.n: " ".join(s.text for s in sorted(p.sentences, key=lambda s: s.index)) for p in papers}
    return Composed("\n".join(lines), lines, evidence, snippets)
