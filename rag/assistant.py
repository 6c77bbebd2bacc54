"""The facade: `Assistant` wires settings, embeddings, store, retrieval and an answer mode.

Every part can be injected (`Assistant(settings, llm=..., embeddings=..., store=...)`);
whatever is not given is built from settings on first use, so constructing an
Assistant is cheap and importing `rag` loads no model. The answer modes themselves
(extractive, local, openai) live in `rag/modes.py`, picked by name from its registry; the
Assistant is their host (`modes.ModeHost`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .analysis import Analyzer, TypeModel
from .citations import build_citations, check_markers
from .corpus import LoadResult, load_bundled, load_corpus
from .embeddings import TextVectors
from .errors import QuestionError
from .generation import Draft, ExtractiveAnswerer, llm_errors, llm_from_settings
from .local_models import local_model_ctx, resolve_local_model
from .modes import MODES, AnswerMode, mode_class
from .planning import Planner
from .retrieval import Retrieval, Retriever
from .settings import Settings, load_settings
from .store import IngestReport, PaperList, PaperStore
from .tuning import AnswerConfig
from .types import ABSTAIN_TEXT, Answer, Paper


class Assistant:
    def __init__(self, settings: Settings | None = None, llm: Any = None, embeddings: Any = None,
                 store: PaperStore | None = None):
        self.settings = settings or load_settings()
        self._llm = llm
        self._embeddings = embeddings
        self._store = store
        self._retriever: Retriever | None = None
        self._extractive: ExtractiveAnswerer | None = None
        self._modes: dict[str, AnswerMode] = {}
        self._local_llm: Any = None
        self._checker: Any = None
        self._vectors: TextVectors | None = None
        self._names_rev: str | None = None

    # --- parts, built lazily ------------------------------------------------
    @property
    def store(self) -> PaperStore:
        if self._store is None:
            self._store = PaperStore(self.settings, embedder=self._embeddings)
        return self._store

    @property
    def retriever(self) -> Retriever:
        if self._retriever is None:
            self._retriever = Retriever(self.settings, self.store)
        return self._retriever

    @property
    def vectors(self) -> TextVectors:
        """Sentence and word vectors, cached in memory and on disk (planner, support check)."""
        if self._vectors is None:
            self._vectors = TextVectors(self.store.ingest_embedder.embed)
        return self._vectors

    @property
    def extractive(self) -> ExtractiveAnswerer:
        if self._extractive is None:
            s = self.settings
            analyzer = Analyzer(TypeModel.load())
            planner = Planner(AnswerConfig.load(s.answer_config), self.vectors)
            self._extractive = ExtractiveAnswerer(s, analyzer, planner)
        return self._extractive

    def refresh_names(self, revision: str) -> None:
        """Names the corpus spells with capitals, so lower-case questions still name them
        (`analysis.corpus_names`, kept on disk by the lexicon and read per word)."""
        if self._names_rev != revision:
            self.extractive.analyzer.corpus_names = self.store.corpus_names()
            self._names_rev = revision

    @property
    def llm(self):
        if self._llm is None:
            self._llm = llm_from_settings(self.settings)
        return self._llm

    @property
    def injected_llm(self) -> bool:
        """A chat model was given (or already built): the openai mode can answer."""
        return self._llm is not None

    @property
    def mode(self) -> str:
        if self.settings.mode == "auto" and self._llm is not None:
            return "openai"
        return self.settings.resolved_mode()

    def answer_mode(self, name: str | None = None) -> AnswerMode:
        """The mode object for `name` (default: this assistant's mode), from the registry in
        `rag/modes.py`; an unknown name is a ConfigError that lists the known ones."""
        name = name or self.mode
        if name not in self._modes:
            self._modes[name] = mode_class(name)(self)
        return self._modes[name]

    def describe_mode(self, mode: str | None = None) -> str:
        return self.answer_mode(mode).describe()

    def available_modes(self) -> list[str]:
        """extractive always; openai when configured (or a chat model was injected);
        local when its optional model is installed."""
        return [name for name, cls in MODES.items() if cls.available(self)]

    # --- corpus ---------------------------------------------------------------
    def count(self) -> int:
        return self.store.count()

    def paper(self, paper_id: str) -> Paper | None:
        return self.store.get_papers([paper_id]).get(paper_id)

    def ingest(self, paths: Iterable[str | Path] = (), papers: Sequence[Paper] | None = None,
               progress=None, skip_invalid: bool = False, replace_all: bool = False, replace: bool = False,
               rebuild: bool = False, wait: bool = True,
               on_wait: Callable[[str], None] | None = None) -> tuple[IngestReport, LoadResult]:
        """Validate everything first; a file with errors writes nothing unless skip_invalid.

        Papers whose id is taken by another indexed paper are reported in `report.conflicts`
        and not written unless `replace`; papers already indexed under another id are reported
        in `report.duplicates`. One writer per data dir: with another one running this waits
        (telling `on_wait`), or raises IndexBusyError if wait=False.
        """
        result = load_corpus(paths) if paths else LoadResult(papers=list(papers or []))
        if result.errors and not skip_invalid:
            result.raise_for_errors()
        report = self.store.ingest(result.papers, progress=progress, replace_all=replace_all, replace=replace,
                                   rebuild=rebuild, wait=wait, on_wait=on_wait)
        return report, result

    def ensure_index(self, progress=None, on_wait: Callable[[str], None] | None = None) -> IngestReport | None:
        """Index the bundled corpus into a new, empty index (first run); never over an index
        that holds papers or that paper-rag did not create (an IndexMissingError says so)."""
        return self.store.index_bundled_if_new(load_bundled, progress=progress, on_wait=on_wait)

    def papers(self, search: str | None = None) -> PaperList:
        """All papers by title; with `search`, title (and id) matches first, then abstract
        matches. A lazy sequence: `len()` counts, a slice reads only its papers."""
        return self.store.list_papers(search)

    # --- asking -----------------------------------------------------------------
    def _clean_question(self, question: str) -> tuple[str, str | None]:
        if not isinstance(question, str) or not question.strip():
            raise QuestionError("the question is empty")
        q = " ".join("".join(ch if ch.isprintable() else " " for ch in question).split())
        if not any(ch.isalnum() for ch in q):
            raise QuestionError("the question has no words in it")
        limit = self.settings.max_question_chars
        if len(q) > limit:
            return q[:limit], f"The question was cut to its first {limit} characters."
        return q, None

    def retrieve(self, question: str, k: int | None = None, paper_ids: Sequence[str] | None = None) -> Retrieval:
        self.store.require_papers()
        return self.retriever.retrieve(question, k=k, paper_ids=paper_ids)

    def ask(self, question: str, k: int | None = None, mode: str | None = None,
            paper_ids: Sequence[str] | None = None, llm_options: Mapping[str, Any] | None = None) -> Answer:
        """The finished answer. A chat model is asked for its whole reply in one request."""
        *_, answer = self._run(question, k, mode, paper_ids, llm_options, streaming=False)
        assert isinstance(answer, Answer)
        return answer

    def stream(self, question: str, k: int | None = None, mode: str | None = None,
               paper_ids: Sequence[str] | None = None,
               llm_options: Mapping[str, Any] | None = None) -> Iterator[str | Answer]:
        """Yield text deltas as they are produced, then the final `Answer`.

        `llm_options` (e.g. `{"temperature": 0.7, "max_tokens": 200}`) apply to this call's
        chat model only (bound per call, the shared model is not changed); the extractive
        mode ignores them."""
        return self._run(question, k, mode, paper_ids, llm_options, streaming=True)

    def _run(self, question: str, k: int | None, mode: str | None, paper_ids: Sequence[str] | None,
             llm_options: Mapping[str, Any] | None, streaming: bool) -> Iterator[str | Answer]:
        t0 = time.perf_counter()
        q, notice = self._clean_question(question)
        answerer = self.answer_mode(mode)  # an unknown mode fails here, before any retrieval
        retrieval = self.retrieve(q, k=k, paper_ids=paper_ids)
        t1 = time.perf_counter()
        draft: Draft | None = None
        first_token: float | None = None
        for piece in answerer.stream(q, retrieval, llm_options, streaming=streaming):
            if isinstance(piece, Draft):
                draft = piece
            else:
                if first_token is None:
                    first_token = time.perf_counter()
                yield piece
        assert draft is not None
        answer = self._finish(q, answerer.name, retrieval, draft)
        end = time.perf_counter()
        answer.timings_ms.update(retrieval.timings_ms)
        answer.timings_ms.update(generate_ms=(end - t1) * 1000, total_ms=(end - t0) * 1000,
                                 first_token_ms=((first_token or end) - t0) * 1000)
        if notice:
            answer.meta["notice"] = notice
        yield answer

    async def aask(self, question: str, **kwargs) -> Answer:
        return await asyncio.to_thread(self.ask, question, **kwargs)

    async def astream(self, question: str, **kwargs) -> AsyncIterator[str | Answer]:
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        done = object()

        def produce() -> None:
            try:
                for item in self.stream(question, **kwargs):
                    loop.call_soon_threadsafe(queue.put_nowait, item)
            except BaseException as exc:  # handed to the consumer below
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            loop.call_soon_threadsafe(queue.put_nowait, done)

        task = loop.run_in_executor(None, produce)
        while (item := await queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
        await task

    # --- the chat models ---------------------------------------------------------------
    def message_chain(self, mode: str = "openai"):
        """LCEL of a generative mode: {question, sources} -> prompt -> chat model."""
        from .modes import GenerativeMode

        answer_mode = self.answer_mode(mode)
        if not isinstance(answer_mode, GenerativeMode):
            raise ValueError(f"the {mode} mode asks no chat model")
        return answer_mode.chain

    def condense(self, history: str, question: str) -> str:
        """A follow-up rewritten as a standalone question by the LLM (prompts/condense_question.md)."""
        from .prompting import render

        prompt = render("condense_question", history=history, question=question)
        with llm_errors(self.settings):
            reply = self.llm.invoke(prompt)
        content = getattr(reply, "content", reply)
        if isinstance(content, list):
            content = " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        text = str(content or "").strip()
        first = text.splitlines()[0] if text else ""
        first = re.sub(r"^(standalone question|question)\s*:\s*", "", first, flags=re.IGNORECASE)
        return first.strip().strip('"\u201c\u201d').strip() or question

    def ensure_local_model(self, progress=None) -> Path:
        """The local model's GGUF, verified (and assembled into the data dir on first use:
        `progress` is a tqdm-like factory for that bar). Raises ModelFilesError with the fix."""
        return resolve_local_model(self.settings, progress=progress)

    @property
    def local_llm(self):
        if self._local_llm is None:
            from .local_llm import LlamaCppChat

            s = self.settings
            self._local_llm = LlamaCppChat(model_path=str(self.ensure_local_model()), n_ctx=local_model_ctx(s),
                                           n_threads=s.local_threads, temperature=s.temperature,
                                           max_tokens=s.local_max_tokens)
        return self._local_llm

    def support_checker(self):
        """The offline support check (rag/support.py), shared by the generative modes' guard."""
        if self._checker is None:
            from .support import SupportChecker

            self._checker = SupportChecker(self.vectors)
        return self._checker

    def _finish(self, question: str, mode: str, retrieval: Retrieval, draft: Draft) -> Answer:
        contexts = draft.contexts if draft.contexts is not None else retrieval.contexts
        checked = check_markers(draft.text, len(contexts))
        text = checked.text
        abstained = draft.abstained or text.strip().rstrip(".") == ABSTAIN_TEXT.rstrip(".")
        if not abstained and not checked.cited and mode != "extractive":
            # An uncited LLM answer cannot be checked against the papers: keep it, but say so.
            draft.meta["uncited"] = True
        citations = [] if abstained else build_citations(text, contexts, checked.cited, draft.snippets)
        evidence = [] if abstained else [e for e in draft.evidence if e.n in checked.cited]
        return Answer(question=question, text=text, citations=citations, contexts=contexts, mode=mode,
                      abstained=abstained, invalid_citations=checked.invalid + draft.invalid, meta=dict(draft.meta),
                      evidence=evidence)
