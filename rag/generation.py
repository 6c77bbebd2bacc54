"""Turning retrieved papers into an answer.

`ExtractiveAnswerer` is the offline default: it quotes the abstract sentences that
best answer the question, names each paper and cites it, so it can never say more
than the papers do. It abstains when the evidence does not cover the question.
`llm_from_settings` builds the chat model for the `openai` mode; the chain around it
lives in the assistant.
"""

from __future__ import annotations

import html
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .chunking import split_sentences
from .citations import defuse_markers
from .errors import ConfigError
from .settings import Settings
from .text import content_terms, has_number, terms, words
from .types import ABSTAIN_TEXT, Context, Passage

_MULTI_RE = re.compile(
    r"\b(papers|works|studies|approaches|methods|models|which ones|several|multiple|both|compare|comparison"
    r"|differ|difference|versus|vs\.?|contrast|similar|in common|each|list|all)\b", re.I)
# A question asks for a number when it opens with one of these (not "which paper ... how many").
_NUMBER_Q_RE = re.compile(
    r"^\W*(how (many|much|large|big|fast|long|small|high|low)|by how much|what (number|percentage|percent|fraction|"
    r"size|accuracy|speed|ratio|rate|score)|what\b[^?]{0,40}\b(accuracy|AP|mAP|FID|error|score|precision|"
    r"recall|F1|AUC|EER|PSNR|SSIM|speed|FPS|latency|rate|margin|size|number))\b", re.I)
# The thing being counted: "how many <large-pose portrait images> are ..."
_COUNTED_RE = re.compile(r"^\W*how many ((?:[\w+-]+\s+){0,3}?[\w+-]+?)\s+(?:are|is|was|were|do|does|did|have|has|had|"
                         r"can|could|in|of|per|for|to|and|does|used|were|needed|make|exist)\b", re.I)
_METRIC_RE = re.compile(r"^\W*what\s+((?:[\w+-]+\s+){0,3}?[\w+-]+?)\s+(?:does|do|did|is|was|on|score|scores)\b", re.I)
_NUMBER_WORDS = re.compile(r"\b(one|two|three|four|five|six|seven|eight|nine|ten|hundred|thousand|million|billion|dozen)s?\b", re.I)


def _has_quantity(text: str) -> bool:
    return has_number(text) or bool(_NUMBER_WORDS.search(text))


@dataclass
class Draft:
    """An answer before citation checking: text with `[n]` markers."""

    text: str
    abstained: bool
    snippets: dict[int, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def short_name(title: str) -> str | None:
    """The method name a title leads with ('Ada-NETS: Face Clustering ...' -> 'Ada-NETS')."""
    head = title.split(":", 1)[0].strip() if ":" in title else ""
    return head if head and len(head.split()) <= 3 else None


_GENERIC_SPECIFIC = re.compile(r"^\d+[dD]$|^[A-Z]$")


def _specific_tokens(question: str) -> list[str]:
    """Tokens that name something (CamelCase, ACRONYMS, digits): if the evidence lacks them,
    the question is about something the papers do not cover."""
    out = []
    for i, w in enumerate(words(question)):
        for part in w.split("-"):
            core = part[:-1] if re.fullmatch(r"[A-Z][A-Z0-9]+s", part) else part
            if not core or _GENERIC_SPECIFIC.match(core):
                continue
            if any(ch.isdigit() for ch in core) or sum(ch.isupper() for ch in core) >= 2:
                out.append(core)
    return out


def _mentions(token: str, evidence: str, evidence_terms: set[str] | None = None, initials: str | None = None) -> bool:
    """True if the evidence names the token, spelled out ('CNN' = 'Convolutional Neural Network')."""
    if evidence_terms is None:
        evidence_terms = set(terms(evidence))
    if set(terms(token)) <= evidence_terms:
        return True
    if re.search(rf"(?<![\w]){re.escape(token)}(?![\w])", evidence, re.I):
        return True
    if initials is None:
        initials = "".join(w[0] for w in words(evidence.lower()))
    return token.isalpha() and token.isupper() and 2 <= len(token) <= 6 and token.lower() in initials


_FOCUS_RE = re.compile(r"^\W*(?:\w+\s+){0,2}?(?:which|what)\s+((?:[\w+-]+\s+){0,4}?)(?:does|do|did|is|are|was|were|has|have|had|can|could|make|makes)\b", re.I)


def _focus_terms(question: str) -> list[str]:
    """The kind of thing asked for ('Which datasets were used ...' -> ['dataset'])."""
    m = _FOCUS_RE.search(question)
    return content_terms(m.group(1)) if m else []


def _quantity_noun(question: str) -> str | None:
    """What a numeric question measures ('How many epochs ...' -> 'epochs')."""
    m = _COUNTED_RE.search(question) or _METRIC_RE.search(question)
    if not m:
        return None
    noun = m.group(1).split()[-1]
    return None if noun.lower() in ("the", "a", "an") else noun


class ExtractiveAnswerer:
    """Thresholds below were set on eval/questions.jsonl and checked on eval/heldout.jsonl."""

    relevance_floor = 0.68  # dense similarity + coverage / 2 of the best paper
    multi_gap = 0.2  # how far below the best paper a further paper may score in a list answer
    multi_dense_floor = 0.35  # ... or, covering the question as well as the best, how similar it must be
    focus_floor = 0.34  # a number must come with the thing asked about
    min_gain_ratio = 0.35  # stop quoting when a sentence adds less than this share of the first one's value

    def __init__(self, settings: Settings, embed: Callable[[list[str]], np.ndarray] | None = None):
        self.settings = settings
        self.embed = embed  # sentence embeddings sharpen the choice of what to quote
        self._sentence_vecs: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def _vectors(self, sentences: list[str]) -> list[np.ndarray]:
        """Sentence vectors, cached by text: the same abstracts come back question after question."""
        with self._lock:
            missing = list(dict.fromkeys(s for s in sentences if s not in self._sentence_vecs))
        if missing:
            fresh = self.embed(missing)
            with self._lock:
                for s, v in zip(missing, fresh):
                    self._sentence_vecs[s] = v
                while len(self._sentence_vecs) > 50_000:
                    self._sentence_vecs.popitem(last=False)
        with self._lock:
            return [self._sentence_vecs[s] for s in sentences]

    def _sentence_units(self, c: Context, query_vec: np.ndarray | None) -> list[Passage]:
        """The paper's passages split into sentences, each scored against the question
        (blended with its passage's score, since a lone sentence loses context)."""
        units = [(p, s) for p in sorted(c.passages, key=lambda p: p.index) for s in split_sentences(p.text)]
        if self.embed is None or query_vec is None or not units:
            return c.passages
        vecs = self._vectors([s for _, s in units])
        return [Passage(p.chunk_id, s, i, 0.6 * float(v @ query_vec) + 0.4 * p.score)
                for i, ((p, s), v) in enumerate(zip(units, vecs))]

    # --- analysis ------------------------------------------------------------
    @staticmethod
    def _weights(qterms: list[str], idf: dict[str, float]) -> dict[str, float]:
        # Words the corpus never uses cannot tell papers apart; they are usually paraphrase.
        top = max(idf.values(), default=1.0)
        return {t: (1.0 if idf.get(t, top) >= top - 1e-9 and top > 0 else idf.get(t, 1.0)) for t in qterms}

    @staticmethod
    def _coverage(weights: dict[str, float], text: str) -> float:
        if not weights:
            return 1.0
        have = set(terms(text))
        total = sum(weights.values())
        return sum(w for t, w in weights.items() if t in have) / total if total else 1.0

    def _named(self, question: str, contexts: list[Context], top: Context) -> list[Context]:
        """Papers the question names: by the method name in the title, or by a specific
        token (e.g. 'MemFace') that the best paper lacks and only one or two others contain."""
        q = question.lower()
        named = []
        for c in contexts:
            name = short_name(c.title)
            if name and re.search(rf"(?<![\w-]){re.escape(name.lower())}(?![\w-])", q):
                named.append(c)
        for token in _specific_tokens(question):
            if len(token) < 3 or any(_mentions(token, f"{c.title} {c.abstract}") for c in named + [top]):
                continue
            holders = [c for c in contexts if re.search(rf"(?<![\w]){re.escape(token)}(?![\w])", f"{c.title} {c.abstract}")]
            if 1 <= len(holders) <= 2:
                named.extend(c for c in holders if c not in named)
        return named

    def plan(self, question: str, contexts: list[Context], idf: dict[str, float],
             query_vec: np.ndarray | None = None) -> dict:
        """Decide which papers and passages answer the question, or that none do."""
        s = self.settings
        if not contexts:
            return {"abstain": "nothing retrieved"}
        best_cos = max(c.dense for c in contexts)
        if best_cos < s.min_relevance:
            return {"abstain": f"best similarity {best_cos:.2f} < {s.min_relevance}"}
        weights = self._weights(content_terms(question), idf)
        cov = {c.n: self._coverage(weights, f"{c.title} {c.abstract}") for c in contexts}
        rel = {c.n: c.dense + 0.5 * cov[c.n] for c in contexts}
        ranked = sorted(contexts, key=lambda c: -rel[c.n])
        top = ranked[0]
        named = self._named(question, contexts, top)
        if rel[top.n] < self.relevance_floor and not named:
            return {"abstain": f"weak evidence (relevance {rel[top.n]:.2f} < {self.relevance_floor})"}
        multi = bool(_MULTI_RE.search(question)) or len(named) > 1
        # A question that names its paper(s) is about them, even if another scores higher.
        chosen = named if named and not (multi and len(named) < 2) else named + ([top] if top not in named else [])
        specific = _specific_tokens(question)
        if multi and len(named) < 2:
            # Passage-level coverage: the question's words must meet in one passage.
            pcov = {c.n: max((self._coverage(weights, f"{c.title} {p.text}") for p in c.passages), default=0.0)
                    for c in contexts}
            prel = {c.n: c.dense + 0.5 * pcov[c.n] for c in contexts}
            for c in sorted(contexts, key=lambda c: -prel[c.n]):
                if len(chosen) >= 4:
                    break
                close = prel[c.n] >= prel[top.n] - self.multi_gap or (
                    pcov[c.n] >= 0.9 * pcov[top.n] and c.dense >= self.multi_dense_floor)
                if c not in chosen and close and c.dense >= s.min_relevance \
                        and all(_mentions(t, f"{c.title} {c.abstract}") for t in specific):
                    chosen.append(c)
        evidence = " ".join(f"{c.title} {c.abstract}" for c in chosen)
        have = set(terms(evidence))
        initials = "".join(w[0] for w in words(evidence.lower()))
        missing = [t for t in _specific_tokens(question) if not _mentions(t, evidence, have, initials)]
        if missing:
            return {"abstain": f"evidence never mentions {', '.join(dict.fromkeys(missing))}"}
        wants_number = bool(_NUMBER_Q_RE.search(question))
        picks: dict[int, list[Passage]] = {}
        units = {c.n: self._sentence_units(c, query_vec) for c in chosen}
        by_sentence = units[chosen[0].n] is not chosen[0].passages
        m = s.max_sentences if by_sentence else max(1, s.max_sentences // 2)
        budget = m if len(chosen) == 1 else max(2, m * 2 // 3) if len(chosen) == 2 else max(2, m // 2)
        focus = _focus_terms(question)
        for c in chosen:
            picks[c.n] = self._pick_passages(units[c.n], weights, wants_number, budget, focus)
        if wants_number:
            numbered = [p for c in chosen for p in units[c.n] if _has_quantity(p.text)]
            noun = _quantity_noun(question)
            if noun:
                numbered = [p for p in numbered if _mentions(noun, p.text)]
            else:
                title_terms = set(terms(" ".join(c.title for c in chosen)))
                focus = {t: w for t, w in weights.items() if t not in title_terms}
                numbered = [p for p in numbered if not focus or self._coverage(focus, p.text) >= self.focus_floor]
            if not numbered:
                return {"abstain": f"a number was asked for{f' ({noun})' if noun else ''} and the evidence states none"}
            for c in chosen:  # make sure the number itself is quoted
                best = max((p for p in numbered if p in units[c.n]), key=lambda p: p.score, default=None)
                if best is not None and best not in picks[c.n]:
                    picks[c.n] = sorted(picks[c.n][: max(budget - 1, 1)] + [best], key=lambda p: p.index)
        return {"chosen": chosen, "picks": picks, "coverage": cov[top.n], "multi": multi}

    def _pick_passages(self, passages: list[Passage], weights: dict[str, float], wants_number: bool, budget: int,
                       focus: list[str] = ()) -> list[Passage]:
        """Greedy: the best passage, then those that cover question words still uncovered.
        Passages naming the kind of thing asked for (the focus) come first."""
        focus_w = {t: 1.0 for t in focus}
        remaining = dict(weights)
        pool = list(passages)
        picked: list[Passage] = []
        first_gain = 0.0
        while pool and len(picked) < budget:
            def gain(p: Passage) -> float:
                bonus = 0.15 if wants_number and _has_quantity(p.text) else 0.0
                if focus_w and not picked:
                    bonus += 0.3 * self._coverage(focus_w, p.text)
                return p.score + 0.5 * self._coverage(remaining, p.text) * (sum(remaining.values()) /
                                                                           max(sum(weights.values()), 1e-9)) + bonus
            best = max(pool, key=gain)
            if picked and gain(best) < self.min_gain_ratio * first_gain:
                break
            if not picked:
                first_gain = gain(best)
            picked.append(best)
            pool.remove(best)
            have = set(terms(best.text))
            remaining = {t: w for t, w in remaining.items() if t not in have}
        return sorted(picked, key=lambda p: p.index)

    # --- composition -----------------------------------------------------------
    def stream(self, question: str, contexts: list[Context], idf: dict[str, float],
               query_vec: np.ndarray | None = None) -> Iterator[str | Draft]:
        """Yield text pieces as they are composed, then the finished `Draft`."""
        plan = self.plan(question, contexts, idf, query_vec)
        if "abstain" in plan:
            yield ABSTAIN_TEXT
            yield Draft(ABSTAIN_TEXT, abstained=True, meta={"abstain_reason": plan["abstain"]})
            return
        pieces: list[str] = []
        snippets: dict[int, str] = {}
        bullets = len(plan["chosen"]) > 1
        for c in plan["chosen"]:
            quoted = [defuse_markers(s) for p in plan["picks"][c.n] for s in split_sentences(p.text)]
            snippets[c.n] = " ".join(p.text for p in plan["picks"][c.n])
            lead = f"{'- ' if bullets else ''}\u201c{defuse_markers(c.title)}\u201d [{c.n}]:"
            piece = lead + "".join(f" {s} [{c.n}]" for s in quoted)
            piece = (piece + "\n") if bullets else piece
            pieces.append(piece)
            yield piece
        yield Draft("".join(pieces).strip(), abstained=False, snippets=snippets,
                    meta={"coverage": round(plan["coverage"], 3), "multi": plan["multi"]})

    def answer(self, question: str, contexts: list[Context], idf: dict[str, float],
               query_vec: np.ndarray | None = None) -> Draft:
        *_, draft = self.stream(question, contexts, idf, query_vec)
        return draft


def format_sources(contexts: list[Context], texts: dict[int, str] | None = None) -> str:
    """Sources for the LLM, delimited so that text inside them reads as data; escaped, so
    an abstract cannot close its block and forge another source. Marker-like text in titles
    and abstracts ('[2]') is defused, so the model cannot copy it into a citation."""
    def body(c: Context) -> str:
        return html.escape(defuse_markers((texts or {}).get(c.n, c.abstract)), quote=False)

    def title(c: Context) -> str:
        return html.escape(defuse_markers(c.title), quote=True)

    return "\n\n".join(f'<source id="{c.n}" title="{title(c)}">\n{body(c)}\n</source>' for c in contexts)


def llm_from_settings(settings: Settings, streaming: bool = True):
    """ChatOpenAI for any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp)."""
    from langchain_openai import ChatOpenAI

    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
    if not key and not settings.openai_base_url:
        raise ConfigError("the 'openai' mode needs OPENAI_API_KEY (or OPENAI_BASE_URL for a local server)",
                          "Set OPENAI_API_KEY, or OPENAI_BASE_URL=http://localhost:8000/v1 for a local "
                          "OpenAI-compatible server, or use --mode extractive.")
    return ChatOpenAI(model=settings.llm_model, api_key=key or "not-needed", base_url=settings.openai_base_url,
                      temperature=settings.temperature, max_tokens=settings.llm_max_tokens,
                      timeout=settings.request_timeout,
                      max_retries=settings.max_retries, streaming=streaming)
