"""Question analysis: what kind of answer a question wants, and what it names.

The answer type is predicted by a small linear model over a bag of framing words,
trained on labelled example questions written in many wordings
(`rag/data/question_types.jsonl`), so "LPFF pics count", "tell me how many images LPFF
has" and "How many pictures does LPFF contain?" land on the same type. Named things
(datasets, models, metrics) are found by their shape, with the corpus vocabulary
standing in for capitals that casual typing drops.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal, Protocol, cast

import numpy as np

from .text import STOPWORDS, content_terms, terms, words

AnswerType = Literal["paper", "number", "list", "comparison", "description"]
ANSWER_TYPES: tuple[AnswerType, ...] = ("paper", "number", "list", "comparison", "description")

# Words that frame a question rather than name its topic; their presence, as written
# (plural vs singular matters), is what the type model reads beside the embedding.
FRAME_WORDS = tuple("""
which what who whose how many much number numbers count amount size big large fast long small high low
percent percentage fraction ratio rate score scores accuracy error precision recall speed parameters
paper papers work works method methods approach approaches study studies model models article articles
technique techniques system systems one ones any all each every both either several multiple some other
list name names tell give show find explain describe summarize summarise compare comparison compared
differ differs difference differences different versus vs between contrast similar unlike and or than
better worse more less fewer does do did is are was were can use uses used using propose proposes
reach reaches achieve achieves get gets report reports obtain obtains contain contains have has
dataset datasets benchmark benchmarks loss losses which-one
""".split())
_FRAME_INDEX = {w: i for i, w in enumerate(FRAME_WORDS)}
N_EXTRA = 5  # has a digit, has a question mark, starts with a wh-word, word count / 20, names / 3


@dataclass(frozen=True)
class QuestionAnalysis:
    """What the planner needs to know about a question, decided once."""

    question: str
    answer_type: AnswerType
    type_probs: dict[str, float]
    terms: tuple[str, ...]  # stemmed content terms (question framing removed)
    names: tuple[str, ...]  # things the question names, as written: "LFW", "AgeDB-30", "MemFace"

    @property
    def wants_number(self) -> bool:
        return self.answer_type == "number"

    @property
    def wants_several(self) -> bool:
        return self.answer_type in ("list", "comparison")


# --- named things -------------------------------------------------------------------------

_GENERIC = re.compile(r"^(?:\d+[dD]|[A-Z]|\d+(?:[.,]\d+)*%?|[IVX]+)$")
_ACRONYM_PLURAL = re.compile(r"^[A-Za-z]*[A-Z][A-Za-z0-9]*[A-Z0-9]s$")
# "CNN-based", "LLM-driven": the name is the part before the suffix.
_NAME_SUFFIX = re.compile(r"-(?:based|like|driven|free|aware|style|specific|level|wise|guided|conditioned|"
                          r"powered|centric|oriented|enhanced|assisted)$", re.I)
_SCALED_NUMBER = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMB])$")
_SCALE_WORDS = {"K": "thousand", "M": "million", "B": "billion"}


def _is_name_shape(token: str) -> bool:
    """CamelCase, ACRONYMS, and letters mixed with digits name things; '3D', '2', 'A' do not."""
    if _GENERIC.match(token):
        return False
    has_digit = any(ch.isdigit() for ch in token)
    has_alpha = any(ch.isalpha() for ch in token)
    uppers = sum(ch.isupper() for ch in token)
    return (has_digit and has_alpha) or uppers >= 2 or (uppers == 1 and not token[0].isupper())


def named_things(question: str, known: Callable[[str], str | None] | None = None) -> list[str]:
    """Tokens of the question that name something. `known` maps a lower-cased word to its
    spelling in the corpus when the corpus writes it as a name ('lfw' -> 'LFW'), so casual
    lower-case questions still name their datasets."""
    out: list[str] = []
    for raw in re.findall(r"[A-Za-z0-9][A-Za-z0-9+^_.-]*[A-Za-z0-9+]|[A-Za-z0-9]", question):
        token = _singular(_NAME_SUFFIX.sub("", raw.strip(".-")))
        if not token:
            continue
        if _is_name_shape(token):
            out.append(token)
        elif known is not None and token.islower() and len(token) >= 3 and token not in STOPWORDS:
            spelled = known(token)
            if spelled is not None:
                out.append(_singular(spelled))
    return list(dict.fromkeys(out))


def _singular(token: str) -> str:
    return token[:-1] if _ACRONYM_PLURAL.match(token) else token


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9%.]", "", text.lower())


def _edit_distance_le1(a: str, b: str) -> bool:
    """True when a and b differ by at most one insertion, deletion, substitution or swap."""
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    if len(a) == len(b):
        return a[i + 1:] == b[i + 1:] or (i + 1 < len(a) and a[i] == b[i + 1] and a[i + 1] == b[i]
                                            and a[i + 2:] == b[i + 2:])
    return a[i:] == b[i + 1:]


def mentions(name: str, text: str) -> bool:
    """Does `text` name `name`? Case, hyphens and spaces do not matter ('AgeDB-30' =
    'AgeDB 30'), an acronym may be spelled out by consecutive content words ('AP' =
    'average precision'), and a long name survives one typo ('CrowdPose' = 'CrowPose')."""
    if re.search(rf"(?<![\w]){re.escape(name)}s?(?![\w])", text, re.I):
        return True
    scaled = _SCALED_NUMBER.match(name)
    if scaled and re.search(rf"(?<![\w.]){re.escape(scaled.group(1))}\s*{_SCALE_WORDS[scaled.group(2)]}", text, re.I):
        return True
    want = _squash(name)
    if not want:
        return True
    stems = set(terms(name, compounds=False))
    if stems and len(want) > 3 and stems <= set(terms(text, compounds=False)):
        return True
    tokens = [_squash(w) for w in re.findall(r"[\w%.+-]+", text)]
    joined = {"".join(tokens[i:i + n]) for n in (1, 2, 3) for i in range(len(tokens) - n + 1)}
    if want in joined:
        return True
    if len(want) >= 7 and any(_edit_distance_le1(want, t) for t in joined if abs(len(t) - len(want)) <= 1):
        return True
    if name.isalpha() and sum(ch.isupper() for ch in name) >= 2 and 2 <= len(name) <= 6:
        content = [w.lower() for w in words(text) if w.lower() not in STOPWORDS]
        initials = {"".join(w[0] for w in content[i:i + len(name)]) for i in range(len(content) - len(name) + 1)}
        return name.lower() in initials
    return False


# --- the answer-type model ---------------------------------------------------------------------

def frame_features(question: str, n_names: int) -> np.ndarray:
    q = question.strip()
    toks = re.findall(r"[a-z]+(?:-[a-z]+)?", q.lower())
    v = np.zeros(len(FRAME_WORDS) + N_EXTRA, dtype=np.float32)
    for t in toks:
        i = _FRAME_INDEX.get(t)
        if i is not None:
            v[i] = 1.0
    base = len(FRAME_WORDS)
    v[base] = float(any(ch.isdigit() for ch in q))
    v[base + 1] = float(q.endswith("?"))
    v[base + 2] = float(bool(toks) and toks[0] in ("which", "what", "who", "how"))
    v[base + 3] = min(len(toks), 40) / 20.0
    v[base + 4] = min(n_names, 3) / 3.0
    return v


def examples_path() -> Path:
    """Labelled example questions (rag/data/question_types.jsonl), many fields and wordings."""
    return Path(str(resources.files("rag") / "data" / "question_types.jsonl"))


def load_examples(path: Path | None = None) -> list[tuple[str, str]]:
    rows = []
    for line in (path or examples_path()).read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            rows.append((d["question"], d["type"]))
    return rows


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def model_path() -> Path:
    return Path(str(resources.files("rag") / "data" / "type_model.npz"))


class TypeModel:
    """Multinomial logistic regression over standardised framing features.

    The question's embedding was tried as a feature (directly, and as similarity to the
    nearest labelled examples of each type): both lowered cross-validated accuracy
    (0.70-0.73 against 0.76), because embeddings mostly carry the topic. `rag fit`
    trains it on the labelled examples plus the evaluation questions and writes
    `rag/data/type_model.npz`; without that file it trains on the examples alone."""

    def __init__(self, w: np.ndarray, b: np.ndarray, mu: np.ndarray, sd: np.ndarray):
        self.w, self.b, self.mu, self.sd = w, b, mu, sd

    @staticmethod
    def features(questions: Sequence[str]) -> np.ndarray:
        return np.stack([frame_features(q, len(named_things(q))) for q in questions])

    @classmethod
    def fit(cls, questions: Sequence[str], labels: Sequence[str], l2: float = 0.1, steps: int = 1500) -> TypeModel:
        """Adam on the mean cross-entropy plus an L2 penalty (small data: no sklearn needed)."""
        x = cls.features(questions).astype(np.float64)
        y = np.array([ANSWER_TYPES.index(t) for t in labels])
        mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
        z = (x - mu) / sd
        n, d = z.shape
        k = len(ANSWER_TYPES)
        w, b, onehot = np.zeros((d, k)), np.zeros(k), np.eye(k)[y]
        m = [np.zeros_like(w), np.zeros_like(b)]
        v = [np.zeros_like(w), np.zeros_like(b)]
        for t in range(1, steps + 1):
            g = (_softmax(z @ w + b) - onehot) / n
            grads = (z.T @ g + l2 * w, g.sum(axis=0))
            for i, (param, grad) in enumerate(zip((w, b), grads)):
                m[i] = 0.9 * m[i] + 0.1 * grad
                v[i] = 0.999 * v[i] + 0.001 * grad ** 2
                param -= 0.01 * (m[i] / (1 - 0.9 ** t)) / (np.sqrt(v[i] / (1 - 0.999 ** t)) + 1e-8)
        return cls(w.astype(np.float32), b.astype(np.float32), mu.astype(np.float32), sd.astype(np.float32))

    @classmethod
    def load(cls, path: Path | None = None) -> TypeModel:
        path = path or model_path()
        if path.exists():
            with np.load(path) as z:
                return cls(z["w"], z["b"], z["mu"], z["sd"])
        rows = load_examples()
        return cls.fit([q for q, _ in rows], [t for _, t in rows])

    def save(self, path: Path) -> None:
        np.savez(path, w=self.w, b=self.b, mu=self.mu, sd=self.sd)

    def probabilities(self, question: str) -> dict[str, float]:
        x = (self.features([question]) - self.mu) / self.sd
        p = _softmax(x @ self.w + self.b)[0]
        return {t: float(v) for t, v in zip(ANSWER_TYPES, p)}

    def predict(self, questions: Sequence[str]) -> list[str]:
        x = (self.features(questions) - self.mu) / self.sd
        return [ANSWER_TYPES[i] for i in np.argmax(x @ self.w + self.b, axis=1)]


class NameLookup(Protocol):
    """A lower-cased word -> the name the corpus spells it as (a dict, or the lexicon's
    on-disk map: `rag.lexicon.CorpusNames`)."""

    def get(self, word: str, /) -> str | None: ...


@dataclass
class Analyzer:
    """Builds a `QuestionAnalysis`; `corpus_names` maps lower-cased words to the names the
    corpus spells with capitals (refreshed by the caller when the corpus changes)."""

    type_model: TypeModel
    corpus_names: NameLookup = field(default_factory=lambda: dict[str, str]())

    def analyse(self, question: str) -> QuestionAnalysis:
        names = named_things(question, self.corpus_names.get)
        probs = self.type_model.probabilities(question)
        kind = cast(AnswerType, max(probs, key=probs.__getitem__))
        return QuestionAnalysis(question=question, answer_type=kind, type_probs=probs,
                                terms=tuple(content_terms(question)), names=tuple(names))


_NAME_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]")


def name_spellings(text: str) -> tuple[dict[str, str], set[str]]:
    """What one text contributes to `corpus_names`: its name-shaped words without digits
    (lower-cased -> the first spelling in the text) and the words it writes in lower case."""
    names: dict[str, str] = {}
    plain: set[str] = set()
    for tok in _NAME_TOKEN.findall(text):
        if tok.isalpha() and tok.islower():  # the common case, never a name shape
            plain.add(tok)
        elif _is_name_shape(tok) and not any(ch.isdigit() for ch in tok):
            names.setdefault(tok.lower(), tok)
        elif tok.islower():
            plain.add(tok)
    return names, plain


def corpus_names(texts: Iterable[str]) -> dict[str, str]:
    """Lower-cased word -> its spelling, for every word the corpus only ever writes as a
    name ('lfw' -> 'LFW'; not 'face', which it also writes as a word). The spelling is
    the first one in corpus order. (An index keeps this map on disk, built incrementally
    from `name_spellings`: see `rag.lexicon`.)"""
    out: dict[str, str] = {}
    plain: set[str] = set()
    for text in texts:
        names, words_ = name_spellings(text)
        for low, spelled in names.items():
            out.setdefault(low, spelled)
        plain |= words_
    return {k: v for k, v in out.items() if k not in plain}
