"""The extractive planner: which papers answer the question, on which sentences, or none.

Every retrieved paper gets a probability of answering the question from a handful of
features that survive rewording (how close its best sentence is, how much of the
question it covers, whether it carries what the question names, its retrieval scores).
The weights and thresholds come from `AnswerConfig`, fitted by cross-validation
(`rag fit`). Hard rules stay few and explicit: a question that names something (a
dataset, a model) the chosen papers never mention is not answered, nor is a numeric
question whose evidence states no number for the asked-for quantity.

`candidates()` does the expensive part (sentence vectors, features); `select()` is the
pure decision on top of it, which `rag fit` replays while it searches thresholds.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .analysis import QuestionAnalysis, mentions
from .chunking import split_sentences
from .text import QUESTION_WORDS, STOPWORDS, terms, words
from .tuning import SENTENCE_CUES, AnswerConfig
from .types import Context

_NUMBER_WORDS = re.compile(r"\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|"
                           r"forty|fifty|hundred|hundreds|thousand|thousands|million|millions|billion|dozen|dozens)\b",
                           re.I)
_DIGITS = re.compile(r"\d")
# The noun a question asks for: "Which datasets were used", "what loss does", "how many images".
_HEAD_RE = re.compile(r"\b(?:which|what|how many|name the|list the|give the)\s+(?:[\w-]+\s+){0,2}?([\w-]+?)\s+"
                      r"(?:does|do|did|is|are|was|were|has|have|had|can|could|makes?|used|to|of|for|in|on|that|the)\b",
                      re.I)
# A sentence that states the paper's own contribution ("we propose X", "... is introduced").
_CONTRIBUTION = re.compile(
    r"\b(?:we|this (?:paper|work|study)|our)\b[^.]{0,40}\b(?:propos|introduc|present|design|"
    r"develop|devis|build|construct|formulat|call|name|coin|dub)\w*|\b(?:propos|introduc)ed\b",
    re.I,
)


ASKING_WORDS = STOPWORDS | QUESTION_WORDS | {"give", "tell", "show", "find", "list", "report", "quote", "get", "gets",
                                            "reach", "reaches", "achieve", "achieves", "whats", "hey"}


def has_quantity(text: str) -> bool:
    return bool(_DIGITS.search(text) or _NUMBER_WORDS.search(text))


@dataclass
class Sentence:
    """One sentence of a retrieved abstract, scored against the question."""

    n: int  # the paper's number (Context.n)
    index: int  # position in its abstract
    text: str
    cos: float
    quantity: float = 0.0  # how well a number in it matches the asked-for quantity (0 = no number)
    features: dict[str, float] = field(default_factory=dict)
    probability: float = 0.0  # P(it states what the question asks)


@dataclass
class Candidate:
    """A retrieved paper with what the decision needs to know about it."""

    context: Context
    sentences: list[Sentence]
    features: dict[str, float]
    mentioned: frozenset[str]  # the question's names this paper mentions
    probability: float = 0.0

    @property
    def quantity(self) -> float:
        return max((s.quantity for s in self.sentences), default=0.0)


@dataclass
class PaperEvidence:
    """A paper the answer rests on, with the sentences it quotes (the lead first)."""

    context: Context
    probability: float
    sentences: list[Sentence]


@dataclass
class AnswerPlan:
    analysis: QuestionAnalysis
    papers: list[PaperEvidence] = field(default_factory=list)
    abstain: str | None = None
    candidates: list[Candidate] = field(default_factory=list)


def term_weights(qterms: tuple[str, ...] | list[str], idf: dict[str, float]) -> dict[str, float]:
    """IDF weights; a word the corpus never uses cannot tell papers apart (it is usually
    paraphrase), so it weighs as a common word."""
    top = max(idf.values(), default=1.0)
    return {t: (1.0 if idf.get(t, top) >= top - 1e-9 and top > 0 else idf.get(t, 1.0)) for t in qterms}


def coverage(weights: dict[str, float], have: set[str]) -> float:
    total = sum(weights.values())
    return sum(w for t, w in weights.items() if t in have) / total if total else 1.0


def short_name(title: str) -> str | None:
    """The method name a title leads with ('Ada-NETS: Face Clustering ...' -> 'Ada-NETS')."""
    head = title.split(":", 1)[0].strip() if ":" in title else ""
    return head if head and len(head.split()) <= 3 else None


def _logistic(features: dict[str, float], weights: dict[str, float], bias: float) -> float:
    z = bias + sum(w * features.get(k, 0.0) for k, w in weights.items())
    return 1.0 / (1.0 + math.exp(-max(min(z, 30.0), -30.0)))


def probability(features: dict[str, float], config: AnswerConfig) -> float:
    """P(this paper answers the question)."""
    return _logistic(features, config.paper_weights, config.paper_bias)


def sentence_probability(features: dict[str, float], config: AnswerConfig) -> float:
    """P(the sentence states what the question asks)."""
    return _logistic(features, config.sentence_weights, config.sentence_bias)


def sentence_features(qa: QuestionAnalysis, sents: list[Sentence], weights: dict[str, float],
                      focus: dict[str, float]) -> None:
    """Fill `Sentence.features` (SENTENCE_FEATURES) for one paper's sentences."""
    top = max((s.cos for s in sents), default=0.0)
    asked = set(weights)
    wants_number = qa.type_probs.get("number", 0.0)
    several = qa.type_probs.get("list", 0.0) + qa.type_probs.get("comparison", 0.0)
    last = max(len(sents) - 1, 1)
    stems = [set(terms(s.text)) for s in sents]
    # Within one abstract, a question word that few of its sentences use points at the one that answers.
    local = {t: math.log((len(sents) + 1) / (1 + sum(t in st for st in stems))) + 0.1 for t in weights}
    local_focus = {t: w for t, w in local.items() if t in focus}
    # What the question asks beyond what names the paper: its terms that neither the title
    # nor the sentence closest to the question (which usually describes the paper) holds.
    closest = max(sents, key=lambda s: s.cos) if sents else None
    described = stems[closest.index] if closest else set()
    residual = {t: w for t, w in focus.items() if t not in described}
    p_paper, p_desc = qa.type_probs.get("paper", 0.0), qa.type_probs.get("description", 0.0)
    head = set(terms(" ".join(_HEAD_RE.findall(qa.question)))) - STOPWORDS
    for s, have in zip(sents, stems):
        own = have - asked
        f = {"cos": s.cos, "cos_gap": s.cos - top, "coverage": coverage(weights, have),
             "local": coverage(local, have), "local_focus": coverage(local_focus, have) if local_focus else 0.0,
             "focus": coverage(focus, have) if focus else 0.0,
             "novelty": len(own) / max(len(have), 1), "number": float(has_quantity(s.text)),
             "position": s.index / last, "first": float(s.index == 0), "last": float(s.index == len(sents) - 1),
             "length": min(len(s.text.split()), 60) / 30.0}
        f["number_q"] = f["number"] * wants_number
        f["residual"] = coverage(residual, have) if residual else 0.0
        f["head"] = float(bool(head & have))
        f["top_cos"] = float(s is closest)
        f["cos_paper"] = s.cos * p_paper
        f["residual_description"] = f["residual"] * p_desc
        f["local_description"] = f["local"] * p_desc
        prev_s, next_s = (
            (sents[s.index - 1] if s.index > 0 else None),
            (sents[s.index + 1] if s.index + 1 < len(sents) else None),
        )
        f["prev_cos"] = prev_s.cos if prev_s else 0.0
        f["next_cos"] = next_s.cos if next_s else 0.0
        f["prev_local"] = coverage(local, stems[s.index - 1]) if prev_s else 0.0
        f["next_local"] = coverage(local, stems[s.index + 1]) if next_s else 0.0
        f["contribution"] = float(bool(_CONTRIBUTION.search(s.text)))
        f["contribution_several"] = f["contribution"] * several
        f["focus_several"] = f["focus"] * several
        f["names"] = sum(mentions(n, s.text) for n in qa.names) / len(qa.names) if qa.names else 0.0
        joined = " ".join(have)
        for cue in SENTENCE_CUES:
            f[f"cue_{cue}"] = float(cue in joined)
        s.features = f


def answerable(features: dict[str, float], config: AnswerConfig) -> float:
    """P(the corpus answers the question), from the best paper's features."""
    return _logistic(features, config.answer_weights, config.answer_bias)


def best(cands: list[Candidate]) -> tuple[Candidate, list[Candidate], list[Candidate]]:
    """The paper an answer would lead with (a named one first), the ranking, the named ones."""
    ranked = sorted(cands, key=lambda c: -c.probability)
    named = [c for c in ranked if c.features["named"]]
    return (named[0] if named else ranked[0]), ranked, named


def select(qa: QuestionAnalysis, cands: list[Candidate], config: AnswerConfig) -> tuple[list[Candidate], str | None]:
    """Which candidates the answer names (in answer order), or why it abstains. Pure:
    depends only on the candidates' features and the config."""
    if not cands:
        return [], "nothing retrieved"
    best_cos = max(c.features["sent_cos"] for c in cands)
    if best_cos < config.min_similarity:
        return [], f"best similarity {best_cos:.2f} < {config.min_similarity:.2f}"
    top, ranked, named = best(cands)
    p_answer = answerable(top.features, config)
    if p_answer < config.abstain_below and not named:
        return [], f"weak evidence (p={p_answer:.2f} < {config.abstain_below:.2f})"
    every = frozenset(qa.names)
    if qa.answer_type == "comparison":
        # Each side of a comparison is the paper that carries a name no chosen paper has yet.
        chosen = list(named[:2])
        for c in sorted(ranked, key=lambda c: -len(c.mentioned)):
            if (
                len(chosen) < 2
                and c not in chosen
                and not c.mentioned <= frozenset().union(*(x.mentioned for x in chosen))
            ):
                chosen.append(c)
        chosen += [c for c in ranked if c not in chosen][: 2 - len(chosen)]
    elif qa.answer_type == "list":
        chosen = [top] + [c for c in named if c is not top]
        for c in ranked:
            if len(chosen) >= config.max_list:
                break
            if c not in chosen and c.probability >= config.list_min \
                    and c.probability >= config.list_ratio * top.probability and c.mentioned >= every:
                chosen.append(c)
    else:
        chosen = [top]
    missing = every - frozenset().union(*(c.mentioned for c in chosen))
    if missing:
        return [], f"evidence never mentions {', '.join(n for n in qa.names if n in missing)}"
    if qa.wants_number:
        chosen = [c for c in chosen if c.quantity >= config.quantity_similarity]
        if not chosen:
            return [], "a number was asked for and the evidence states none"
    return chosen, None


class Planner:
    def __init__(self, config: AnswerConfig, vectors: Callable[[list[str]], np.ndarray]):
        self.config = config
        self.vectors = vectors  # text -> vectors (cached): sentences and single words

    # --- candidates: the expensive part ----------------------------------------------
    def candidates(self, qa: QuestionAnalysis, contexts: list[Context], idf: dict[str, float],
                   qvec: np.ndarray, quantities: bool | None = None) -> list[Candidate]:
        """Every retrieved paper scored; `quantities` forces the numeric check on (fitting
        replays other answer types), by default it runs for numeric questions only."""
        weights = term_weights(qa.terms, idf)
        key = dict(sorted(weights.items(), key=lambda kv: -kv[1])[:2])  # the question's rarest words
        top_lex = max((c.lexical for c in contexts), default=0.0) or 1.0
        top_fused = max((c.score for c in contexts), default=0.0) or 1.0
        q = qa.question.lower()
        ordered = sorted(contexts, key=lambda x: -x.score)
        split = [split_sentences(c.abstract) or [c.abstract] for c in ordered]
        flat = [t for texts in split for t in texts]
        cos = self.vectors(flat) @ qvec if flat else np.zeros(0)  # one batch for every paper
        out = []
        start = 0
        for rank, (c, texts) in enumerate(zip(ordered, split), 1):
            sents = [Sentence(c.n, i, t, float(cos[start + i])) for i, t in enumerate(texts)]
            start += len(texts)
            title_terms = set(terms(c.title))
            focus = {t: w for t, w in weights.items() if t not in title_terms}
            sentence_features(qa, sents, weights, focus)
            for s in sents:
                s.probability = sentence_probability(s.features, self.config)
            if qa.wants_number if quantities is None else quantities:
                asked = [w for w in dict.fromkeys(x.lower() for x in words(qa.question))
                         if w not in ASKING_WORDS and not set(terms(w, compounds=False)) <= title_terms]
                for s in sents:
                    s.quantity = self.quantity_score(asked, s.text)
            name = short_name(c.title)
            text = f"{c.title} {c.abstract}"
            mentioned = frozenset(n for n in qa.names if mentions(n, text))
            features = {
                "sent_cos": max(s.cos for s in sents),
                "dense": c.dense,
                "coverage": coverage(weights, title_terms | set(terms(c.abstract))),
                "sent_coverage": max(coverage(weights, title_terms | set(terms(s.text))) for s in sents),
                "key_coverage": coverage(key, title_terms | set(terms(c.abstract))),
                "lexical": c.lexical / top_lex,
                "fused": c.score / top_fused,
                "inv_rank": 1.0 / rank,
                "names": len(mentioned) / len(qa.names) if qa.names else 1.0,
                "named": float(bool(name and re.search(rf"(?<![\w-]){re.escape(name.lower())}(?![\w-])", q))),
            }
            cand = Candidate(c, sents, features, mentioned)
            cand.probability = probability(features, self.config)
            out.append(cand)
        return out

    def quantity_score(self, asked: list[str], sentence: str) -> float:
        """How well a number in the sentence is about what the question asks: 1 when a word
        near one of its numbers is one of the question's words that do not merely name the
        paper (`asked`: its terms minus the title's), else the best cosine between such
        words (so 'pictures' finds '19,590 ... images'); 0 without a number."""
        if not has_quantity(sentence):
            return 0.0
        if not asked:
            return 1.0
        toks = words(sentence)
        near: list[str] = []
        for i, t in enumerate(toks):
            if _DIGITS.search(t) or _NUMBER_WORDS.fullmatch(t):
                near.extend(toks[max(0, i - 6): i + 7])
        near = list(dict.fromkeys(w.lower() for w in near if not _DIGITS.search(w) and len(w) > 2
                                  and w.lower() not in STOPWORDS))
        if not near:
            return 0.0
        if set(terms(" ".join(asked), compounds=False)) & set(terms(" ".join(near), compounds=False)):
            return 1.0
        return max(0.0, float((self.vectors(asked) @ self.vectors(near).T).max()))

    # --- the plan -------------------------------------------------------------------
    def plan(self, qa: QuestionAnalysis, contexts: list[Context], idf: dict[str, float],
             qvec: np.ndarray) -> AnswerPlan:
        cands = self.candidates(qa, contexts, idf, qvec)
        chosen, abstain = select(qa, cands, self.config)
        plan = AnswerPlan(analysis=qa, abstain=abstain, candidates=cands)
        if not abstain:
            plan.papers = evidence_for(qa, chosen, self.config)
        return plan


def evidence_for(qa: QuestionAnalysis, chosen: list[Candidate], config: AnswerConfig) -> list[PaperEvidence]:
    """The sentences each chosen paper contributes, most probable first, within a word budget:
    for a one-paper answer, or per paper in a list or a comparison.
    A numeric answer leads with a sentence that states a number about the asked-for quantity."""
    several = len(chosen) > 1
    budget = config.word_budget[("comparison" if qa.answer_type == "comparison" else "list") if several else "one"]
    out = []
    for cand in chosen:
        ranked = sorted(cand.sentences, key=lambda s: -s.probability)
        if qa.wants_number:
            numeric = [s for s in ranked if s.quantity >= config.quantity_similarity]
            ranked = numeric[:1] + [s for s in ranked if s not in numeric[:1]]
        picked = [ranked[0]]
        used = len(ranked[0].text.split())
        for s in ranked[1:]:
            size = len(s.text.split())
            if s.probability < config.extra_sentence_min or used + size > budget:
                continue
            picked.append(s)
            used += size
        out.append(PaperEvidence(cand.context, cand.probability, picked))
    return out
