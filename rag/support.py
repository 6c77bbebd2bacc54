"""Does a cited paper support a sentence? An offline check shared by the evaluation
(groundedness) and by the small local model's guard.

A sentence is supported by a paper it cites when most of its content words occur in
that paper (verbatim quotes pass here, without running the model), or when its
embedding is close to one of the abstract's sentences. This is ALCE's citation recall
and RAGAS faithfulness with an embedding model and word overlap instead of an NLI model
or an LLM, which this project cannot ship offline.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Callable, Iterable

import numpy as np

from .types import Answer

SUPPORT_COSINE = 0.6  # max cosine between the sentence and one abstract sentence
SUPPORT_OVERLAP = 0.7  # share of the sentence's content terms found in the paper


_MARKER_RUN_AFTER_STOP = re.compile(r"([.!?])((?:\s*\[\d{1,3}\])+)(?=\s|$)")
_MARKER = re.compile(r"\[\d{1,3}\]")


def attach_markers(text: str) -> str:
    """'A sentence. [1] Next' -> 'A sentence [1]. Next', so `claims()` gives each sentence
    its own markers (the extractive mode puts them after the full stop)."""
    return _MARKER_RUN_AFTER_STOP.sub(lambda m: " " + "".join(_MARKER.findall(m.group(2))) + m.group(1), text)


_PLACEHOLDER = re.compile(r"\x00(\d+)\x00")
# The extractive answer's own connectives ("Two papers:", "Three papers compared:") state nothing.
_CONNECTIVE = re.compile(r"^\W*(?:one|two|three|four|five|six|\d+) papers(?: compared)?:", re.I)
_ENDS_WITH_MARKER = re.compile(r"\[\d{1,3}\]\W*$")
_ABBREV_END = re.compile(r"(?:\b(?:e\.g|i\.e|et al|vs|cf|etc|approx|resp|Fig|Figs|Eq|Sec|Tab|No)\.|\b[A-Z]\.)$")


def _strip_names(sentence: str, titles: Iterable[str]) -> str:
    """The sentence without markers and without paper titles (naming a cited paper is
    supported by that paper)."""
    out = _MARKER.sub(" ", _PLACEHOLDER.sub(" ", sentence))
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
    from .citations import claims

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
            tail = _MARKER.split(prev)[-1].strip(" -:;\n\t")
            if _ABBREV_END.search(prev.rstrip()) or (tail and any(tail in abstracts.get(n, "") for n in nums)):
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


class SupportChecker:
    """Does a cited paper support a sentence? Offline, with the index's own embedder:
    max cosine to one of the abstract's sentences >= `cosine`, or content-term overlap
    with title + abstract >= `overlap` (ALCE citation recall / RAGAS faithfulness, with
    an embedding model and word overlap instead of an NLI model or LLM)."""

    def __init__(self, embed: Callable[[list[str]], np.ndarray], cosine: float = SUPPORT_COSINE,
                 overlap: float = SUPPORT_OVERLAP):
        self.embed = embed
        self.cosine = cosine
        self.overlap = overlap
        self._cache: dict[tuple[str, str], np.ndarray] = {}
        self._lock = threading.Lock()

    def _abstract_vectors(self, paper_id: str, abstract: str) -> np.ndarray:
        from .chunking import split_sentences

        key = (paper_id, abstract)
        with self._lock:
            hit = self._cache.get(key)
        if hit is None:
            sentences = split_sentences(abstract) or [abstract]
            hit = np.asarray(self.embed(sentences), dtype=np.float32)
            with self._lock:
                self._cache[key] = hit
        return hit

    def supports(self, sentence: str, cited: list) -> bool:
        """One sentence against the papers (`Context`s) it cites: the guard on a small model."""
        from .text import terms

        if not cited:
            return False
        core = _strip_names(sentence, [c.title for c in cited])
        if not terms(core, compounds=False):
            return True  # it only names the paper
        if max(content_share(core, f"{c.title} {c.abstract}") for c in cited) >= self.overlap:
            return True
        vec = np.asarray(self.embed([core]), dtype=np.float32)[0]
        best = max(float((self._abstract_vectors(c.paper_id, c.abstract) @ vec).max(initial=0.0)) for c in cited)
        return best >= self.cosine

    def check(self, answer: Answer) -> dict[str, Any]:
        """Per-sentence support of a (non-abstained) answer.

        Sentences with no content word once markers and paper titles are removed (a bare
        "[1]" or a heading that only names the paper) are not counted. A sentence
        counts as supported if at least one paper it cites supports it.
        """
        from .text import terms

        by_n = {c.n: c for c in answer.contexts}
        rows: list[dict[str, Any]] = []
        cited_ctx: list[list] = []
        todo: list[tuple[int, str]] = []
        for sent, nums in answer_sentences(answer):
            cited = [by_n[n] for n in nums if n in by_n]
            core = _strip_names(sent, [c.title for c in cited])
            if not terms(core, compounds=False):
                continue
            rows.append({"sentence": sent, "cited": [c.paper_id for c in cited], "supported": False,
                         "cosine": None, "overlap": None})
            cited_ctx.append(cited)
            if cited:
                todo.append((len(rows) - 1, core))
        # Word overlap first: it settles verbatim quotes without running the model.
        need_cos = []
        for i, core in todo:
            overlap = max(content_share(core, f"{c.title} {c.abstract}") for c in cited_ctx[i])
            rows[i].update(overlap=round(overlap, 4), supported=overlap >= self.overlap)
            if not rows[i]["supported"]:
                need_cos.append((i, core))
        if need_cos:
            vecs = np.asarray(self.embed([core for _, core in need_cos]), dtype=np.float32)
            for (i, _), vec in zip(need_cos, vecs):
                best = max(float((self._abstract_vectors(c.paper_id, c.abstract) @ vec).max(initial=0.0))
                           for c in cited_ctx[i])
                rows[i].update(cosine=round(best, 4), supported=best >= self.cosine)
        supported = sum(r["supported"] for r in rows)
        return {"groundedness": supported / len(rows) if rows else None, "sentences": rows,
                "supported": supported, "counted": len(rows)}
