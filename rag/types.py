"""Plain data shared by every stage; no behaviour beyond (de)serialising."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Mode = Literal["extractive", "openai"]

ABSTAIN_TEXT = "The indexed papers do not answer this question."
MAX_TITLE_IN_CHUNK = 160  # characters of the title embedded with each chunk (< half the window)


@dataclass(frozen=True)
class Paper:
    id: str
    title: str
    abstract: str
    url: str | None = None
    code_urls: tuple[str, ...] = ()
    authors: tuple[str, ...] = ()
    year: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    id: str
    paper_id: str
    title: str
    text: str
    index: int
    n_chunks: int

    @property
    def embed_text(self) -> str:
        """The title travels with every chunk so a lone sentence keeps its topic (cut, so
        that even a title in a script of one wordpiece per character leaves room)."""
        return f"{self.title[:MAX_TITLE_IN_CHUNK]}. {self.text}"


@dataclass
class Passage:
    """One chunk of a retrieved paper with its similarity to the question."""

    chunk_id: str
    text: str
    index: int
    score: float


@dataclass
class Context:
    """A retrieved paper, as handed to the answer step (numbered from 1)."""

    n: int
    paper_id: str
    title: str
    abstract: str
    score: float
    url: str | None = None
    code_urls: tuple[str, ...] = ()
    dense: float = 0.0
    lexical: float = 0.0
    passages: list[Passage] = field(default_factory=list)
    rank: int = 0  # position in the retrieval ranking (n is the marker number, in reading order)


@dataclass
class Citation:
    n: int
    paper_id: str
    title: str
    snippet: str
    score: float
    url: str | None = None


@dataclass
class Evidence:
    """A sentence of an abstract that the answer rests on."""

    n: int
    paper_id: str
    sentence: str


@dataclass
class Answer:
    question: str
    text: str
    citations: list[Citation]
    contexts: list[Context]
    mode: str
    abstained: bool = False
    invalid_citations: int = 0
    timings_ms: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    evidence: list[Evidence] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON schema shared by `rag ask --json`, the UI API and eval runs."""
        return {
            "question": self.question,
            "answer": self.text,
            "mode": self.mode,
            "abstained": self.abstained,
            "invalid_citations": self.invalid_citations,
            "citations": [
                {"n": c.n, "paper_id": c.paper_id, "title": c.title, "url": c.url,
                 "score": round(c.score, 4), "snippet": c.snippet}
                for c in self.citations
            ],
            "evidence": [{"n": e.n, "paper_id": e.paper_id, "sentence": e.sentence} for e in self.evidence],
            "retrieved": [
                {"n": c.n, "rank": c.rank or c.n, "paper_id": c.paper_id, "title": c.title, "score": round(c.score, 4)}
                for c in self.contexts
            ],
            "timings_ms": {k: round(v, 1) for k, v in self.timings_ms.items()},
            **({"meta": self.meta} if self.meta else {}),
        }


def paper_to_dict(p: Paper) -> dict[str, Any]:
    d = asdict(p)
    d["code_urls"], d["authors"] = list(p.code_urls), list(p.authors)
    return {k: v for k, v in d.items() if v not in (None, [], {})}
