"""Does a cited paper support a sentence? An offline check shared by the evaluation
(groundedness) and by the guard on the generative modes (`rag/guard.py`).

A sentence is supported by a paper it cites when

1. every specific it states (numbers with their units, and name-like tokens such as
   dataset, benchmark and method names: `LFW`, `FaceForensics++`, `ResNet-50`) occurs in
   that paper's title or abstract: an invented "FID of 1.00" is never supported, however
   close its wording (`missing_specifics`);
2. a good share of its rare words occur in the paper (IDF-weighted content-term overlap
   >= `SUPPORT_WEIGHTED`): what separates the right paper from a similar one in the same
   field, which shares the field's common words but not the paper's own;
3. and either most of its content words occur in the paper (verbatim quotes pass here,
   without running the model), or its embedding is close to one of the abstract's
   sentences;
4. and, when other retrieved papers are given, none of them supports it clearly better
   (by `SUPPORT_MARGIN`): then the sentence is about that other paper.

This is ALCE's citation recall and RAGAS faithfulness with an embedding model and word
overlap instead of an NLI model or an LLM, which this project cannot ship offline. Measured
on the bundled corpus by `bench/bench_support.py` (README of eval/ has the figures).
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .chunking import ABBREV_END
from .citations import MARKER, MARKER_PATTERN, defuse_markers
from .types import Answer, Context

SUPPORT_COSINE = 0.6  # max cosine between the sentence and one abstract sentence
SUPPORT_OVERLAP = 0.7  # share of the sentence's content terms found in the paper
SUPPORT_WEIGHTED = 0.4  # share of the sentence's IDF-weighted content terms found in the paper
SUPPORT_MARGIN = 0.2  # another paper whose support score is this much higher takes the sentence

IdfFn = Callable[[str], float]


_MARKER_RUN_AFTER_STOP = re.compile(rf"([.!?])((?:\s*{MARKER_PATTERN})+)(?=\s|$)")


def attach_markers(text: str) -> str:
    """'A sentence. [1] Next' -> 'A sentence [1]. Next', so `claims()` gives each sentence
    its own markers (the extractive mode puts them after the full stop)."""
    return _MARKER_RUN_AFTER_STOP.sub(
        lambda m: " " + "".join(x.group(0) for x in MARKER.finditer(m.group(2))) + m.group(1), text
    )


_PLACEHOLDER = re.compile(r"\x00(\d+)\x00")
# The extractive answer's own connectives ("Two papers:", "Three papers compared:") state nothing.
_CONNECTIVE = re.compile(r"^\W*(?:one|two|three|four|five|six|\d+) papers(?: compared)?:", re.I)
_ENDS_WITH_MARKER = re.compile(MARKER_PATTERN + r"\W*$")


def _strip_names(sentence: str, titles: Iterable[str]) -> str:
    """The sentence without markers and without paper titles (naming a cited paper is
    supported by that paper)."""
    out = MARKER.sub(" ", _PLACEHOLDER.sub(" ", sentence))
    for t in titles:
        if t:
            out = re.sub(re.escape(t), " ", out, flags=re.I)
    out = re.sub(r"[\u201c\u201d\"]\s*[\u201c\u201d\"]", " ", out)
    out = _CONNECTIVE.sub(" ", out)
    return re.sub(r"\s+", " ", out).strip(" -:;,\n\t")


def answer_sentences(answer: Answer) -> list[tuple[str, list[int]]]:
    """`citations.claims()` of the answer, made robust to the extractive format: markers
    after the full stop belong to the sentence before, a paper title is never split
    ('... Alignment problem? (and ...)'), and a quoted abstract sentence that the naive
    splitter broke ('(e.g. ...', '? when ...') is joined back to the cited part."""

    titles = {c.n: c.title for c in answer.contexts}
    text = attach_markers(answer.text)
    for n, title in sorted(titles.items(), key=lambda kv: -len(kv[1])):
        if title and len(title) > 3:
            text = text.replace(title, f"\x00{n}\x00")
    abstracts = {c.n: c.abstract for c in answer.contexts}

    def restore(sent: str) -> str:
        return _PLACEHOLDER.sub(lambda m: titles.get(int(m.group(1)), ""), sent)

    out: list[tuple[str, list[int]]] = []
    for line in text.split("\n"):
        line_out: list[tuple[str, list[int]]] = []
        _line_sentences(line, restore, abstracts, line_out)
        out.extend(_cite_quotes(line_out))
    return out


def _cite_quotes(sentences: list[tuple[str, list[int]]]) -> list[tuple[str, list[int]]]:
    """The extractive answer cites a quoted clause once, beside its opening or closing mark
    ('**X** [1]: “S1. S2.”' or '“S1. S2.” [1]'): that marker covers every sentence inside."""
    out = list(sentences)
    i = 0
    while i < len(out):
        if "\u201c" not in out[i][0]:
            i += 1
            continue
        j = i
        while j < len(out) - 1 and "\u201d" not in out[j][0]:
            j += 1
        run = out[i:j + 1]
        nums = next((n for _, n in run if n), [])
        out[i:j + 1] = [(sent, n or nums) for sent, n in run]
        i = j + 1
    return out


def _line_sentences(text: str, restore, abstracts: dict[int, str], out: list[tuple[str, list[int]]]) -> None:
    from .citations import claims

    for sent, nums in claims(text):
        sent = restore(sent)
        # A fragment that does not end in a marker is the head of a sentence the splitter
        # broke when it ends in an abbreviation, or when its uncited tail is verbatim from
        # an abstract the next part cites: join them.
        while out and not _ENDS_WITH_MARKER.search(out[-1][0]):
            prev, prev_nums = out[-1]
            tail = MARKER.split(prev)[-1].strip(" -:;\n\t")
            if ABBREV_END.search(prev.rstrip()) or (tail and any(tail in abstracts.get(n, "") for n in nums)):
                out.pop()
                sent, nums = f"{prev} {sent}", list(dict.fromkeys(prev_nums + nums))
            else:
                break
        out.append((sent, nums))


def content_share(sentence: str, reference: str) -> float:
    """Share of the sentence's content terms (stemmed, no stopwords) found in the reference."""
    from .text import terms

    want = set(terms(sentence, compounds=False))
    if not want:
        return 1.0
    return len(want & set(terms(reference, compounds=False))) / len(want)


# --- specifics: numbers with units, and names -------------------------------------------------

# A token: anything between spaces and brackets; trailing punctuation is cut off below.
_TOKEN = re.compile(r"(?:[^\s()\[\]{}\"\u201c\u201d,;:]|(?<=\d),(?=\d{3}))+")
_NUMBER = re.compile(r"[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_UNIT_ALIASES = {"%": "%", "percent": "%", "pct": "%", "x": "x", "\u00d7": "x", "times": "x", "k": "k",
                 "thousand": "k", "m": "m", "million": "m", "b": "b", "billion": "b", "ms": "ms", "s": "s",
                 "sec": "s", "second": "s", "seconds": "s", "fps": "fps", "db": "db", "mb": "mb", "gb": "gb",
                 "tb": "tb", "px": "px", "pixel": "px", "pixels": "px", "flops": "flops", "gflops": "gflops",
                 "mflops": "mflops", "tflops": "tflops", "hz": "hz", "khz": "khz", "mhz": "mhz", "bits": "bit",
                 "bit": "bit", "bpp": "bpp", "h": "h", "hours": "h", "hour": "h", "min": "min", "minutes": "min"}
_NUMBER_WITH_UNIT = re.compile(r"^(" + _NUMBER.pattern + r")(" + "|".join(
    sorted((re.escape(u) for u in _UNIT_ALIASES), key=len, reverse=True)) + r")?$", re.I)
_LETTER = re.compile(r"[A-Za-z]")


@dataclass(frozen=True)
class Specific:
    """A number (with its unit, if any) or a name-like token a sentence states."""

    shown: str  # as written
    value: str | None = None  # a number: digits without thousands separators ("19590", "99.63")
    unit: str = ""  # a number's normalised unit ("%", "m", "ms", ...)
    name: str | None = None  # a name: lower-case letters and digits only ("resnet50", "faceforensics++")


def _squash(token: str) -> str:
    return re.sub(r"[^a-z0-9+]", "", token.lower())


def _tokens(text: str) -> list[str]:
    out = []
    for t in _TOKEN.findall(text):
        t = t.strip(".!?'\u2018\u2019")
        if t:
            out.append(t)
    return out


def _is_name(token: str) -> bool:
    """Dataset, benchmark and method names: CamelCase or ALLCAPS (LFW, FaceNet, GCNs), a
    letter-digit mix (ResNet-50, 300W, 3D), or a C++-style suffix (FaceForensics++)."""
    if not _LETTER.search(token):
        return False
    if token.endswith("++") or (any(ch.isdigit() for ch in token) and _LETTER.search(token)):
        return True
    letters = [ch for ch in token if ch.isalpha()]
    return len(letters) >= 2 and any(ch.isupper() for ch in letters[1:])


def specifics(text: str) -> list[Specific]:
    """The numbers (with units) and name-like tokens a text states, markers ignored."""
    toks = _tokens(MARKER.sub(" ", text))
    out: list[Specific] = []
    for i, tok in enumerate(toks):
        m = _NUMBER_WITH_UNIT.match(tok)
        if m:
            value = m.group(1).replace(",", "").lstrip("+").replace("\u2212", "-")
            unit = _UNIT_ALIASES.get((m.group(2) or "").lower(), "")
            if not unit and i + 1 < len(toks):
                unit = (
                    _UNIT_ALIASES.get(toks[i + 1].lower(), "")
                    if toks[i + 1].lower() not in ("s", "h", "m", "b", "k", "x")
                    else ""
                )
            out.append(Specific(tok, value=value, unit=unit))
        elif _is_name(tok):
            name = tok[:-1] if re.fullmatch(r"[A-Z][A-Z0-9]+s", tok) else tok  # GCNs -> GCN
            out.append(Specific(tok, name=_squash(name)))
    return out


def _numbers_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    if "." in a and "." in b:  # 1.0 = 1.00, but 1.00 is not 1 (the evidence must say it)
        try:
            return math.isclose(float(a), float(b), rel_tol=0, abs_tol=1e-12)
        except ValueError:
            return False
    return False


@dataclass
class _EvidenceIndex:
    numbers: list[tuple[str, str]] = field(default_factory=list)  # (value, unit)
    tokens: list[str] = field(default_factory=list)  # squashed tokens, in order


def _evidence_index(text: str) -> _EvidenceIndex:
    idx = _EvidenceIndex()
    for s in specifics(text):
        if s.value is not None:
            idx.numbers.append((s.value, s.unit))
    # Digits inside names count as numbers the evidence states too (ResNet-50 states 50).
    for tok in _tokens(text):
        if not _NUMBER_WITH_UNIT.match(tok):
            idx.numbers.extend((d, "") for d in re.findall(r"\d+(?:\.\d+)?", tok))
        sq = _squash(tok)
        if sq:
            idx.tokens.append(sq)
    return idx


def _has_number(idx: _EvidenceIndex, value: str, unit: str) -> bool:
    for v, u in idx.numbers:
        if _numbers_equal(v, value) and (not unit or not u or u == unit):
            return True
    return False


def _has_name(idx: _EvidenceIndex, name: str) -> bool:
    toks = idx.tokens
    return any(name in t for t in toks) or any(name in a + b for a, b in zip(toks, toks[1:]))


def missing_specifics(sentence: str, evidence: Sequence[str]) -> list[str]:
    """The numbers (a value with a unit other than the evidence's counts as another number)
    and names the sentence states that none of the evidence texts does, as written."""
    wanted = specifics(sentence)
    if not wanted:
        return []
    # An abstract's own "[11]" is shown defused as "(11)" (citations.defuse_markers): the same number.
    idx = _evidence_index(" \n ".join(defuse_markers(e) for e in evidence))
    missing = []
    for s in wanted:
        ok = _has_number(idx, s.value, s.unit) if s.value is not None else _has_name(idx, s.name or "")
        if not ok and s.shown not in missing:
            missing.append(s.shown)
    return missing


# --- the check ----------------------------------------------------------------------------------

@dataclass
class Support:
    """How well one paper supports one sentence."""

    n: int
    overlap: float  # share of the sentence's content terms in the paper
    weighted: float  # the same, weighted by IDF
    cosine: float | None  # best cosine to one of the abstract's sentences (None = not computed)
    missing: list[str]  # specifics the paper does not state
    ok: bool = False

    @property
    def score(self) -> float:
        """One number to rank papers for a sentence."""
        return self.weighted + max(self.overlap, self.cosine or 0.0)


@dataclass
class Judgement:
    cited: list[Support]  # every cited paper, in citation order
    others: list[Support]  # every other paper given
    supporting: list[Support]  # the cited papers that support the sentence, best first
    better: list[Support]  # other papers that support it clearly better (then `supporting` is empty)


def paper_text(c: Context) -> str:
    return f"{c.title} {c.abstract}"


class SupportChecker:
    """Does a cited paper support a sentence? Offline, with the index's own embedder (see
    the module docstring for the rule). `idf` (term -> IDF, e.g. the BM25 index's
    `term_idf`) weights the rare-word test; without it every word weighs the same."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray], cosine: float = SUPPORT_COSINE,
                 overlap: float = SUPPORT_OVERLAP, weighted: float = SUPPORT_WEIGHTED,
                 margin: float = SUPPORT_MARGIN, idf: IdfFn | None = None):
        self.embed = embed
        self.cosine = cosine
        self.overlap = overlap
        self.weighted = weighted
        self.margin = margin
        self.idf = idf
        self._terms: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()

    def thresholds(self) -> dict[str, float]:
        return {"cosine": self.cosine, "overlap": self.overlap, "weighted": self.weighted, "margin": self.margin}

    def _abstract_vectors(self, paper_id: str, abstract: str) -> np.ndarray:
        """The abstract's sentence vectors; `embed` caches them (the assistant passes its
        `TextVectors`, the one sentence-vector cache shared with the planner)."""
        from .chunking import split_sentences

        return np.asarray(self.embed(split_sentences(abstract) or [abstract]), dtype=np.float32)

    def _paper_terms(self, c: Context) -> set[str]:
        from .text import terms

        key = (c.paper_id, c.abstract)
        with self._lock:
            hit = self._terms.get(key)
        if hit is None:
            hit = set(terms(paper_text(c), compounds=False))
            with self._lock:
                self._terms[key] = hit
        return hit

    def score(self, sentence: str, papers: Sequence[Context], idf: IdfFn | None = None,
              vec: np.ndarray | None = None) -> list[Support]:
        """How well each paper supports the sentence (markers and the papers' titles ignored)."""
        from .text import terms

        idf = idf or self.idf
        out: list[Support] = []
        if not papers:
            return out
        core = _strip_names(sentence, [c.title for c in papers])
        want = set(terms(core, compounds=False))
        weights = {t: (idf(t) if idf else 1.0) for t in want}
        total = sum(weights.values())
        need_cos = False
        for c in papers:
            have = self._paper_terms(c)
            overlap = len(want & have) / len(want) if want else 1.0
            weighted = sum(w for t, w in weights.items() if t in have) / total if total > 0 else 1.0
            missing = missing_specifics(sentence, [paper_text(c)])
            out.append(Support(c.n, round(overlap, 4), round(weighted, 4), None, missing))
            need_cos = need_cos or bool(want and overlap < self.overlap and weighted >= self.weighted and not missing)
        if need_cos or vec is not None:
            if vec is None:
                vec = np.asarray(self.embed([core]), dtype=np.float32)[0]
            for c, s in zip(papers, out):
                s.cosine = round(float((self._abstract_vectors(c.paper_id, c.abstract) @ vec).max(initial=0.0)), 4)
        for s in out:
            s.ok = not s.missing and (not want or (s.weighted >= self.weighted and (
                s.overlap >= self.overlap or (s.cosine is not None and s.cosine >= self.cosine))))
        return out

    def judge(self, sentence: str, cited: Sequence[Context], others: Sequence[Context] = (),
              idf: IdfFn | None = None) -> Judgement:
        """The sentence against the papers it cites and the other retrieved papers: which
        cited papers support it, and which other papers support it better. A cited paper
        that supports it loses it to another paper that supports it by `margin` more."""
        cited = list(cited)
        ns = {c.n for c in cited}
        others = [o for o in others if o.n not in ns]
        scores = self.score(sentence, cited + others, idf)
        mine, theirs = scores[: len(cited)], scores[len(cited):]
        supporting = sorted((s for s in mine if s.ok), key=lambda s: -s.score)
        top = supporting[0].score if supporting else -math.inf
        better = sorted((s for s in theirs if s.ok and s.score > top + (self.margin if supporting else 0.0)),
                        key=lambda s: -s.score)
        return Judgement(cited=mine, others=theirs, supporting=[] if better else supporting, better=better)

    def supports(self, sentence: str, cited: list, others: Sequence[Context] = (), idf: IdfFn | None = None) -> bool:
        """One sentence against the papers (`Context`s) it cites; `others` are the other
        retrieved papers, one of which may support it clearly better."""
        if not cited:
            return False
        return bool(self.judge(sentence, cited, others, idf).supporting)

    def check(self, answer: Answer, idf: IdfFn | None = None) -> dict[str, Any]:
        """Per-sentence support of a (non-abstained) answer.

        Sentences with no content word once markers and paper titles are removed (a bare
        "[1]" or a heading that only names the paper) are not counted. A sentence counts
        as supported if at least one paper it cites supports it and no other retrieved
        paper supports it clearly better. `invented` counts sentences stating a number or
        name that the papers they cite (any retrieved paper, for an uncited one) do not."""
        from .text import terms

        by_n = {c.n: c for c in answer.contexts}
        rows: list[dict[str, Any]] = []
        for sent, nums in answer_sentences(answer):
            cited = [by_n[n] for n in nums if n in by_n]
            core = _strip_names(sent, [c.title for c in cited])
            if not terms(core, compounds=False):
                continue
            row: dict[str, Any] = {"sentence": sent, "cited": [c.paper_id for c in cited], "supported": False,
                                   "cosine": None, "overlap": None, "weighted": None}
            if not cited:
                missing = missing_specifics(sent, [paper_text(c) for c in answer.contexts])
                if missing:
                    row["missing"] = missing
            else:
                j = self.judge(sent, cited, [c for c in answer.contexts if c not in cited], idf)
                lead = (j.supporting or sorted(j.cited, key=lambda s: -s.score))[0]
                row.update(overlap=lead.overlap, weighted=lead.weighted, cosine=lead.cosine,
                           supported=bool(j.supporting))
                if lead.missing:
                    row["missing"] = lead.missing
                if j.better:
                    row["better"] = [by_n[s.n].paper_id for s in j.better]
            rows.append(row)
        supported = sum(r["supported"] for r in rows)
        return {"groundedness": supported / len(rows) if rows else None, "sentences": rows,
                "supported": supported, "counted": len(rows),
                "invented": sum(1 for r in rows if r.get("missing"))}
