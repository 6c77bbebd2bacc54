"""Turning retrieved papers into an answer.

`ExtractiveAnswerer` is the offline default: it quotes the abstract sentences that
best answer the question, names each paper and cites it, so it can never say more
than the papers do. It abstains when the evidence does not cover the question.
`llm_from_settings` builds the chat model for the `openai` mode and `llm_errors` turns its
failures into one `LLMError`; the chains around the chat models live in `rag/modes.py`.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from .analysis import Analyzer
from .citations import defuse_markers
from .composition import compose
from .errors import ConfigError, LLMError
from .planning import AnswerPlan, Planner
from .settings import Settings, redact_url
from .types import ABSTAIN_TEXT, Context, Evidence


@dataclass
class Draft:
    """An answer before citation checking: text with `[n]` markers. `contexts` replaces the
    retrieved ones when the answerer renumbered them (markers in reading order); `invalid`
    counts markers pointing at no retrieved paper that were removed before the text was
    released (the guard of the generative modes does that sentence by sentence)."""

    text: str
    abstained: bool
    snippets: dict[int, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    evidence: list[Evidence] = field(default_factory=list)
    contexts: list[Context] | None = None
    invalid: int = 0


def renumber(contexts: list[Context], first: list[int]) -> tuple[list[Context], dict[int, int]]:
    """Contexts with the papers in `first` numbered 1.. in that order, the rest after them
    in retrieval order; returns the new list and the old -> new number map."""
    order = list(dict.fromkeys(first)) + [c.n for c in contexts if c.n not in first]
    mapping = {old: new for new, old in enumerate(order, 1)}
    by_n = {c.n: c for c in contexts}
    return [replace(by_n[old], n=mapping[old], rank=by_n[old].rank or old) for old in order], mapping


class ExtractiveAnswerer:
    """The offline answer: analyse the question, plan which papers and sentences answer it
    (or abstain), and compose the answer from the abstracts' own words."""

    def __init__(self, settings: Settings, analyzer: Analyzer, planner: Planner):
        self.settings = settings
        self.analyzer = analyzer
        self.planner = planner

    def plan(self, question: str, contexts: list[Context], idf: dict[str, float],
             query_vec: np.ndarray) -> AnswerPlan:
        analysis = self.analyzer.analyse(question)
        return self.planner.plan(analysis, contexts, idf, query_vec)

    def draft(self, plan: AnswerPlan, contexts: list[Context]) -> Draft:
        qa = plan.analysis
        meta = {"answer_type": qa.answer_type}
        if plan.abstain:
            return Draft(ABSTAIN_TEXT, abstained=True, meta={**meta, "abstain_reason": plan.abstain})
        renumbered, mapping = renumber(contexts, [p.context.n for p in plan.papers])
        by_n = {c.n: c for c in renumbered}
        for p in plan.papers:
            p.context = by_n[mapping[p.context.n]]
            for s in p.sentences:
                s.n = mapping[s.n]
        composed = compose(plan)
        return Draft(composed.text, abstained=False, snippets=composed.snippets, meta=meta,
                     evidence=composed.evidence, contexts=renumbered)

    def stream(self, question: str, contexts: list[Context], idf: dict[str, float],
               query_vec: np.ndarray) -> Iterator[str | Draft]:
        """Yield the answer line by line, then the finished `Draft`."""
        draft = self.draft(self.plan(question, contexts, idf, query_vec), contexts)
        lines = draft.text.split("\n")
        for i, line in enumerate(lines):
            yield line + ("\n" if i < len(lines) - 1 else "")
        yield draft

    def answer(self, question: str, contexts: list[Context], idf: dict[str, float],
               query_vec: np.ndarray) -> Draft:
        *_, draft = self.stream(question, contexts, idf, query_vec)
        assert isinstance(draft, Draft)
        return draft


def format_sources(contexts: list[Context], texts: dict[int, str] | None = None) -> str:
    """Sources for the LLM, delimited so that text inside them reads as data; escaped, so
    an abstract cannot close its block and forge another source."""
    def body(c: Context) -> str:
        return html.escape(defuse_markers((texts or {}).get(c.n, c.abstract)), quote=False)

    return "\n\n".join(f'<source id="{c.n}" title="{html.escape(defuse_markers(c.title), quote=True)}">\n{body(c)}'
                       f'\n</source>' for c in contexts)


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


@contextmanager
def llm_errors(settings: Settings):
    """Every way a chat-model call fails becomes one LLMError with a hint."""
    import openai

    try:
        yield
    except openai.APITimeoutError:
        raise LLMError(f"the language model did not answer within {settings.request_timeout:.0f}s") from None
    except openai.RateLimitError:
        raise LLMError("the language model server is rate limiting requests (HTTP 429); try again shortly") from None
    except openai.APIConnectionError:
        raise LLMError(
            f"cannot reach the language model at {redact_url(settings.openai_base_url or 'api.openai.com')}"
        ) from None
    except openai.APIStatusError as exc:
        raise LLMError(f"the language model server returned HTTP {exc.status_code}") from None
    except (openai.OpenAIError, ValueError) as exc:
        raise LLMError(f"the language model sent a reply that could not be read ({type(exc).__name__})") from None
