"""Word-level text helpers shared by lexical retrieval, answer composition and grading."""

from __future__ import annotations

import re
from functools import lru_cache

_WORD_RE = re.compile(r"[A-Za-z0-9]+(?:[-'][A-Za-z0-9]+)*")
_NUMBER_RE = re.compile(r"\d")
_ACRONYM_PLURAL_RE = re.compile(r"^[A-Z][A-Z0-9]+s$")  # GCNs -> GCN

STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has
have having he her here hers herself him himself his how i if in into is it its itself just me more
most my myself no nor not now of off on once only or other our ours ourselves out over own same she
should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
would you your yours yourself yourselves s t don via using used use uses based paper papers
""".split())

# Words that frame a question rather than carry its topic.
QUESTION_WORDS = frozenset("""
which what who whose how many much paper papers work works study studies method methods approach
approaches propose proposes proposed present presents presented introduce introduces introduced
describe describes described corpus article articles report reports reported mention mentions
mentioned claim claims tell according say says doe name named kind type one two
""".split())


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def words(text: str) -> list[str]:
    return _WORD_RE.findall(text)


def terms(text: str, drop: frozenset[str] = STOPWORDS, compounds: bool = True) -> list[str]:
    """Lower-cased, stemmed content words; hyphenated words yield their parts (and
    themselves, when `compounds`, which sharpens BM25 but double-counts in coverage)."""
    out: list[str] = []
    for w in words(text):
        w = (w[:-1] if _ACRONYM_PLURAL_RE.match(w) else w).lower()
        parts = ([w] if compounds or "-" not in w else []) + (w.split("-") if "-" in w else [])
        out.extend(p for p in parts if p and p not in drop and (len(p) > 1 or p.isdigit()))
    return _stemmer().stemWords(out) if out else []


def content_terms(question: str) -> list[str]:
    """Terms that carry a question's topic (no stopwords, no question framing)."""
    return list(dict.fromkeys(terms(question, STOPWORDS | QUESTION_WORDS, compounds=False)))


def has_number(text: str) -> bool:
    return bool(_NUMBER_RE.search(text))
