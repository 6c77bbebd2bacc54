"""Answer modes: each one a class behind one small protocol, picked by name from a registry.

- `extractive` quotes the abstracts (no model);
- `local` runs a small GGUF in process with llama.cpp;
- `openai` asks any OpenAI-compatible server (OpenAI, vLLM, Ollama, llama.cpp's server).

The two generative modes share everything but their chat model (`GenerativeMode`): the
extractive planner decides whether the corpus answers the question and which papers and
sentences do (retrieval and the planner abstain, not the model); the model sees only those
sentences, numbered, and is asked for a short, answer-first reply; every sentence it writes
goes through the guard (`rag/guard.py`) before the user sees it. If no sentence survives,
the extractive answer is shown instead (`meta.fallback`).

A mode gets what it needs from its host (the `Assistant`, see `ModeHost`); this module
never imports the assistant, the UI or the CLI.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from .errors import ConfigError, LLMError
from .generation import Draft, ExtractiveAnswerer, format_sources, llm_errors, renumber
from .guard import SentenceGuard
from .prompting import load_prompt
from .settings import Settings, redact_url
from .support import SupportChecker
from .types import ABSTAIN_TEXT, Evidence

if TYPE_CHECKING:
    from .retrieval import Retrieval

# The system prompt allows the answer sentence plus this many more (one per paper of a list).
EXTRA_SENTENCES = 3


class ModeHost(Protocol):
    """What a mode may use; the `Assistant` provides it (parts built lazily there)."""

    settings: Settings

    @property
    def extractive(self) -> ExtractiveAnswerer: ...

    @property
    def llm(self) -> Any: ...  # the openai mode's chat model (or one injected with Assistant(llm=...))

    @property
    def local_llm(self) -> Any: ...  # the local mode's llama.cpp chat model

    @property
    def injected_llm(self) -> bool: ...  # a chat model was given to the Assistant

    def refresh_names(self, revision: str) -> None: ...

    def support_checker(self) -> SupportChecker: ...


class AnswerMode(Protocol):
    """One way of writing an answer from retrieved papers."""

    name: ClassVar[str]

    def __init__(self, host: ModeHost) -> None: ...

    def stream(self, question: str, retrieval: Retrieval, llm_options: Mapping[str, Any] | None = None,
               streaming: bool = True) -> Iterator[str | Draft]:
        """Text deltas as they may be shown, then the finished `Draft`. `streaming=False`
        asks the model for the whole reply in one request (`Assistant.ask`)."""
        ...

    def describe(self) -> str:
        """One line for the UI and the CLI: what writes the answer."""
        ...

    @classmethod
    def available(cls, host: ModeHost) -> bool:
        """Whether this mode can answer on this host (installed, configured)."""
        ...


MODES: dict[str, type[AnswerMode]] = {}
_M = TypeVar("_M", bound="type[AnswerMode]")


def register(cls: _M) -> _M:
    """Class decorator: make a mode available under its `name`."""
    MODES[cls.name] = cls
    return cls


def mode_class(name: str) -> type[AnswerMode]:
    try:
        return MODES[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown answer mode {name!r}; known: {', '.join(MODES)}",
                          f"Use one of {', '.join(MODES)} (RAG_MODE, --mode, or mode=...).") from None


def answer_prompt():
    """The generative modes' prompt: system rules (constant, so llama.cpp reuses their KV
    cache from one question to the next) and the user turn with the sources and question."""
    from langchain_core.prompts import ChatPromptTemplate

    system = load_prompt("answer_system", {"max_sentences"}).format(max_sentences=EXTRA_SENTENCES)
    user = load_prompt("answer_user", {"sources", "question"})
    return ChatPromptTemplate.from_messages([("system", system.replace("{", "{{").replace("}", "}}")),
                                             ("human", user)])


@register
class ExtractiveMode:
    """Quotes the abstract sentences the planner picked; writes no words of its own."""

    name: ClassVar[str] = "extractive"

    def __init__(self, host: ModeHost):
        self.host = host

    @classmethod
    def available(cls, host: ModeHost) -> bool:
        return True

    def describe(self) -> str:
        return "offline extractive (quotes the abstracts; no LLM)"

    def stream(self, question: str, retrieval: Retrieval, llm_options: Mapping[str, Any] | None = None,
               streaming: bool = True) -> Iterator[str | Draft]:
        self.host.refresh_names(retrieval.revision)
        yield from self.host.extractive.stream(question, retrieval.contexts, retrieval.idf, retrieval.query_vec)


class GenerativeMode:
    """A chat model on a short leash (see the module docstring). Subclasses name their
    chat model, its label in `meta.model`, and their default guard policy."""

    name: ClassVar[str]
    default_guard: ClassVar[str]

    def __init__(self, host: ModeHost):
        self.host = host
        self._chain: Any = None

    # --- what a subclass provides ---------------------------------------------------------
    def model(self) -> Any:
        raise NotImplementedError

    def model_label(self) -> str:
        raise NotImplementedError

    def errors(self) -> AbstractContextManager:
        """Turns the chat model's failures into LLMError."""
        return llm_errors(self.host.settings)

    # --- shared ---------------------------------------------------------------------------
    @property
    def chain(self):
        """LCEL: {question, sources} -> prompt -> chat model (message chunks). One per mode."""
        if self._chain is None:
            self._chain = answer_prompt() | self.model()
        return self._chain

    @property
    def guard_policy(self) -> str:
        policy = self.host.settings.guard
        return self.default_guard if policy == "auto" else policy

    def deltas(self, question: str, sources: str, llm_options: Mapping[str, Any] | None = None,
               streaming: bool = True) -> Iterator[str]:
        """The model's text, as deltas (one piece when not streaming); every failure is an
        LLMError. `llm_options` are bound to the model for this call only."""
        chain = self.chain
        options = dict(llm_options or {})
        if not streaming:
            options["stream"] = False
        if options:
            chain = chain.first | chain.last.bind(**options)
        llm = self.chain.last
        inputs = {"question": question, "sources": sources}
        with self.errors():
            if not streaming:
                reply = chain.invoke(inputs)
                content = reply.content if isinstance(reply.content, str) else ""
                if content:
                    yield content
                return
            finished = False
            for chunk in chain.stream(inputs):
                meta = getattr(chunk, "response_metadata", None) or {}
                finished = finished or bool(meta.get("finish_reason"))
                delta = chunk.content if isinstance(chunk.content, str) else ""
                if delta:
                    yield delta
        if not finished and getattr(llm, "streaming", False):
            # OpenAI-compatible streams end with a finish_reason; without it the answer was cut off.
            raise LLMError("the language model's answer was cut off mid-stream")

    def stream(self, question: str, retrieval: Retrieval, llm_options: Mapping[str, Any] | None = None,
               streaming: bool = True) -> Iterator[str | Draft]:
        host = self.host
        host.refresh_names(retrieval.revision)
        extractive = host.extractive
        plan = extractive.plan(question, retrieval.contexts, retrieval.idf, retrieval.query_vec)
        if plan.abstain:
            yield ABSTAIN_TEXT
            yield Draft(ABSTAIN_TEXT, abstained=True, meta={"abstain_reason": plan.abstain})
            return
        # The planner's papers become sources [1]..[m], in its order; the rest follow.
        contexts, mapping = renumber(retrieval.contexts, [p.context.n for p in plan.papers])
        shown = contexts[: len(plan.papers)]
        chosen = {mapping[p.context.n]: sorted(p.sentences, key=lambda s: s.index) for p in plan.papers}
        evidence = {n: " ".join(s.text for s in sents) for n, sents in chosen.items()}
        guard = SentenceGuard(host.support_checker(), contexts, self.guard_policy, idf=retrieval.term_idf,
                              shown=shown)
        for delta in self.deltas(question, format_sources(shown, evidence), llm_options, streaming):
            yield from guard.feed(delta)
        yield from guard.close()
        meta: dict[str, Any] = {"model": self.model_label(), "guard": guard.report.meta()}
        if not guard.kept:
            draft = extractive.draft(plan, retrieval.contexts)
            draft.meta.update(meta, fallback="extractive")
            lines = draft.text.split("\n")
            for i, line in enumerate(lines):
                yield line + ("\n" if i < len(lines) - 1 else "")
            yield draft
            return
        ev = [Evidence(n=n, paper_id=contexts[n - 1].paper_id, sentence=s.text)
              for n, sents in chosen.items() for s in sents]
        yield Draft(guard.text, abstained=False, snippets=evidence, meta=meta, evidence=ev, contexts=contexts,
                    invalid=guard.report.invalid_markers)


@register
class OpenAIMode(GenerativeMode):
    """Any OpenAI-compatible chat server. A capable model may paraphrase beyond what the
    offline check can see, so by default unsupported sentences are flagged, not dropped."""

    name: ClassVar[str] = "openai"
    default_guard: ClassVar[str] = "flag"

    @classmethod
    def available(cls, host: ModeHost) -> bool:
        s = host.settings
        return bool(host.injected_llm or s.openai_api_key or s.openai_base_url)

    def model(self) -> Any:
        return self.host.llm

    def model_label(self) -> str:
        return self.host.settings.llm_model

    def describe(self) -> str:
        s = self.host.settings
        return f"LLM: {s.llm_model}" + (f" at {redact_url(s.openai_base_url)}" if s.openai_base_url else "")


@register
class LocalMode(GenerativeMode):
    """A small GGUF in process (`rag/local_models.py`): it invents unless checked, so by
    default unsupported sentences are dropped."""

    name: ClassVar[str] = "local"
    default_guard: ClassVar[str] = "strict"

    @classmethod
    def available(cls, host: ModeHost) -> bool:
        from .local_llm import local_available

        return host.settings.mode == "local" or local_available(host.settings)

    def model(self) -> Any:
        return self.host.local_llm

    def model_label(self) -> str:
        from .local_models import local_model_label

        return local_model_label(self.host.settings)

    def describe(self) -> str:
        from .local_models import get_local_model

        s = self.host.settings
        if s.local_model_path is not None:
            return f"offline local LLM: {Path(s.local_model_path).name} via llama.cpp (checked against the sources)"
        m = get_local_model(s.local_model)
        return f"offline local LLM: {m.title} via llama.cpp ({m.speed}; checked against the sources)"
