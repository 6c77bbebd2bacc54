"""The facade: `Assistant` wires settings, embeddings, store, retrieval and an answer mode.

Every part can be injected (`Assistant(settings, llm=..., embeddings=..., store=...)`);
whatever is not given is built from settings on first use, so constructing an
Assistant is cheap and importing `rag` loads no model.
"""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence

from .citations import build_citations, check_markers
from .corpus import LoadResult, load_bundled, load_corpus
from .errors import LLMError, QuestionError
from .analysis import Analyzer, TypeModel
from .embeddings import TextVectors
from .generation import Draft, ExtractiveAnswerer, format_sources, llm_from_settings
from .local_models import get_local_model, local_model_ctx, local_model_label, resolve_local_model
from .planning import Planner
from .prompting import load_prompt
from .retrieval import Retrieval, Retriever
from .settings import Settings, load_settings, redact_url
from .store import IngestReport, PaperStore
from .tuning import AnswerConfig
from .text import terms
from .types import ABSTAIN_TEXT, Answer, Evidence, Paper

_ANSWER_VARS = {"abstain_text", "max_sentences"}
# A finished sentence in a token stream: end punctuation, any markers, then a space.
_SENTENCE_DONE = re.compile(r"[.!?](?:\s*\[[\d,\s-]+\])*\s+(?=\S)")


class Assistant:
    def __init__(self, settings: Settings | None = None, llm: Any = None, embeddings: Any = None,
                 store: PaperStore | None = None):
        self.settings = settings or load_settings()
        self._llm = llm
        self._embeddings = embeddings
        self._store = store
        self._retriever: Retriever | None = None
        self._extractive: ExtractiveAnswerer | None = None
        self._chains: dict[str, Any] = {}
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

    def _refresh_names(self, revision: str) -> None:
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
    def mode(self) -> str:
        if self.settings.mode == "auto" and self._llm is not None:
            return "openai"
        return self.settings.resolved_mode()

    def describe_mode(self, mode: str | None = None) -> str:
        mode = mode or self.mode
        if mode == "local":
            s = self.settings
            if s.local_model_path is not None:
                return f"offline local LLM: {Path(s.local_model_path).name} via llama.cpp (checked against the sources)"
            m = get_local_model(s.local_model)
            return f"offline local LLM: {m.title} via llama.cpp ({m.speed}; checked against the sources)"
        if mode == "openai":
            url = self.settings.openai_base_url
            return f"LLM: {self.settings.llm_model}" + (f" at {redact_url(url)}" if url else "")
        return "offline extractive (quotes the abstracts; no LLM)"

    def available_modes(self) -> list[str]:
        """extractive always; openai when configured (or a chat model was injected);
        local when its optional model is installed."""
        from .local_llm import local_available

        modes = ["extractive"]
        s = self.settings
        if self._llm is not None or s.openai_api_key or s.openai_base_url:
            modes.append("openai")
        if self.mode == "local" or local_available(s):
            modes.append("local")
        return modes

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

    def papers(self, search: str | None = None) -> Sequence[Paper]:
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
        *_, answer = self.stream(question, k=k, mode=mode, paper_ids=paper_ids, llm_options=llm_options)
        return answer

    def stream(self, question: str, k: int | None = None, mode: str | None = None,
               paper_ids: Sequence[str] | None = None,
               llm_options: Mapping[str, Any] | None = None) -> Iterator[str | Answer]:
        """Yield text deltas as they are produced, then the final `Answer`.

        `llm_options` (e.g. `{"temperature": 0.7, "max_tokens": 200}`) apply to this call's
        chat model only (bound per call, the shared model is not changed); the extractive
        mode ignores them."""
        t0 = time.perf_counter()
        q, notice = self._clean_question(question)
        mode = mode or self.mode
        retrieval = self.retrieve(q, k=k, paper_ids=paper_ids)
        t1 = time.perf_counter()
        draft: Draft | None = None
        first_token: float | None = None
        if mode == "extractive":
            self._refresh_names(retrieval.revision)
            pieces = self.extractive.stream(q, retrieval.contexts, retrieval.idf, retrieval.query_vec)
        elif mode == "local":
            pieces = self._local_stream(q, retrieval, llm_options)
        else:
            pieces = self._llm_stream(q, retrieval, llm_options)
        for piece in pieces:
            if isinstance(piece, Draft):
                draft = piece
            else:
                if first_token is None:
                    first_token = time.perf_counter()
                yield piece
        assert draft is not None
        answer = self._finish(q, mode, retrieval, draft)
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

    # --- the LLM modes -------------------------------------------------------------------
    def answer_chain(self, mode: str = "openai"):
        """LCEL: {question, sources} -> prompt -> chat model -> text."""
        from langchain_core.output_parsers import StrOutputParser

        return self.message_chain(mode) | StrOutputParser()

    def message_chain(self, mode: str = "openai"):
        """LCEL: {question, sources} -> prompt -> chat model (message chunks, with metadata)."""
        if mode not in self._chains:
            from langchain_core.prompts import ChatPromptTemplate

            name = "answer_local_system" if mode == "local" else "answer_system"
            system = load_prompt(name, _ANSWER_VARS).format(
                abstain_text=ABSTAIN_TEXT, max_sentences=max(self.settings.max_sentences, 6))
            user = load_prompt("answer_user", {"sources", "question"})
            prompt = ChatPromptTemplate.from_messages(
                [("system", system.replace("{", "{{").replace("}", "}}")), ("human", user)])
            self._chains[mode] = prompt | (self.local_llm if mode == "local" else self.llm)
        return self._chains[mode]

    def rag_chain(self):
        """The whole pipeline as one LCEL runnable: question -> `Answer` (openai mode)."""
        from langchain_core.runnables import RunnableLambda, RunnablePassthrough

        return (
            RunnablePassthrough.assign(retrieval=RunnableLambda(lambda x: self.retrieve(x["question"], x.get("k"))))
            | RunnablePassthrough.assign(sources=lambda x: format_sources(x["retrieval"].contexts))
            | RunnablePassthrough.assign(raw=self.answer_chain())
            | RunnableLambda(lambda x: self._finish(x["question"], "openai", x["retrieval"],
                                                     Draft(x["raw"], abstained=False)))
        )

    @contextmanager
    def _llm_errors(self):
        """Every way an OpenAI-compatible call fails becomes one LLMError with a hint."""
        import openai

        try:
            yield
        except openai.APITimeoutError:
            raise LLMError(f"the language model did not answer within {self.settings.request_timeout:.0f}s") from None
        except openai.RateLimitError:
            raise LLMError("the language model server is rate limiting requests (HTTP 429); try again shortly") from None
        except openai.APIConnectionError:
            raise LLMError(f"cannot reach the language model at {redact_url(self.settings.openai_base_url or 'api.openai.com')}") from None
        except openai.APIStatusError as exc:
            raise LLMError(f"the language model server returned HTTP {exc.status_code}") from None
        except (openai.OpenAIError, ValueError) as exc:
            raise LLMError(f"the language model sent a reply that could not be read ({type(exc).__name__})") from None

    def _chat_deltas(self, mode: str, question: str, sources: str,
                     llm_options: Mapping[str, Any] | None = None) -> Iterator[str]:
        """Text deltas from the chat model; every failure becomes an LLMError. `llm_options`
        are bound to the model for this call only (`.bind(temperature=..., max_tokens=...)`)."""
        finished = False
        llm = self.local_llm if mode == "local" else self.llm
        chain = self.message_chain(mode)
        if llm_options:
            chain = chain.first | chain.last.bind(**llm_options)
        with self._llm_errors():
            for chunk in chain.stream({"question": question, "sources": sources}):
                meta = getattr(chunk, "response_metadata", None) or {}
                finished = finished or bool(meta.get("finish_reason"))
                delta = chunk.content if isinstance(chunk.content, str) else ""
                if delta:
                    yield delta
        if not finished and getattr(llm, "streaming", False):
            # OpenAI-compatible streams end with a finish_reason; without it the answer was cut off.
            raise LLMError("the language model's answer was cut off mid-stream")

    def condense(self, history: str, question: str) -> str:
        """A follow-up rewritten as a standalone question by the LLM (prompts/condense_question.md)."""
        from .prompting import render

        prompt = render("condense_question", history=history, question=question)
        with self._llm_errors():
            reply = self.llm.invoke(prompt)
        content = getattr(reply, "content", reply)
        if isinstance(content, list):
            content = " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        text = str(content or "").strip()
        first = text.splitlines()[0] if text else ""
        first = re.sub(r"^(standalone question|question)\s*:\s*", "", first, flags=re.IGNORECASE)
        return first.strip().strip('"\u201c\u201d').strip() or question

    def _llm_stream(self, question: str, retrieval: Retrieval,
                    llm_options: Mapping[str, Any] | None = None) -> Iterator[str | Draft]:
        best = max((c.dense for c in retrieval.contexts), default=0.0)
        if best < self.settings.min_relevance:
            yield ABSTAIN_TEXT
            yield Draft(ABSTAIN_TEXT, abstained=True, meta={"abstain_reason": f"best similarity {best:.2f}"})
            return
        parts: list[str] = []
        for delta in self._chat_deltas("openai", question, format_sources(retrieval.contexts), llm_options):
            parts.append(delta)
            yield delta
        yield Draft("".join(parts), abstained=False, meta={"model": self.settings.llm_model})

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

    def _local_stream(self, question: str, retrieval: Retrieval,
                      llm_options: Mapping[str, Any] | None = None) -> Iterator[str | Draft]:
        """The small local model, on a short leash: it only sees the evidence the extractive
        planner chose, every sentence it writes must cite a source that supports it (the
        offline support check), and if nothing survives the extractive answer is used."""
        self._refresh_names(retrieval.revision)
        plan = self.extractive.plan(question, retrieval.contexts, retrieval.idf, retrieval.query_vec)
        if plan.abstain:
            yield ABSTAIN_TEXT
            yield Draft(ABSTAIN_TEXT, abstained=True, meta={"abstain_reason": plan.abstain})
            return
        chosen = [p.context for p in plan.papers]
        evidence = {p.context.n: " ".join(s.text for s in sorted(p.sentences, key=lambda s: s.index))
                    for p in plan.papers}
        sources = format_sources(chosen, evidence)
        checker = self._support_checker()
        by_n = {c.n: c for c in chosen}
        kept: list[str] = []
        dropped = 0
        buffer = ""

        def judge(sentence: str) -> str | None:
            checked = check_markers(sentence, max(by_n))
            text = checked.text.strip()
            if not text or text == ABSTAIN_TEXT or not terms(re.sub(r"\[\d+\]", " ", text)):
                return None  # empty, an abstention inside an answer, or a bare "1. [1]"
            cited = [by_n[n] for n in checked.cited if n in by_n]
            if cited:
                return text if checker.supports(text, cited) else None
            # Small models often forget the marker: cite the first source that supports it.
            for c in chosen:
                if checker.supports(text, [c]):
                    return f"{text} [{c.n}]"
            return None

        for delta in self._chat_deltas("local", question, sources, llm_options):
            buffer += delta
            while (m := _SENTENCE_DONE.search(buffer)) is not None:
                sentence, buffer = buffer[: m.end()].strip(), buffer[m.end():]
                good = judge(sentence) if sentence else None
                if good:
                    kept.append(good)
                    yield good + " "
                elif sentence:
                    dropped += 1
        if buffer.strip():
            good = judge(buffer.strip())
            if good:
                kept.append(good)
                yield good
            else:
                dropped += 1
        meta = {"model": local_model_label(self.settings), "dropped_sentences": dropped}
        if not kept:
            for piece in self.extractive.stream(question, retrieval.contexts, retrieval.idf, retrieval.query_vec):
                if isinstance(piece, Draft):
                    piece.meta.update(meta, fallback="extractive")
                yield piece
            return
        ev = [Evidence(n=p.context.n, paper_id=p.context.paper_id, sentence=s.text)
              for p in plan.papers for s in sorted(p.sentences, key=lambda s: s.index)]
        yield Draft(" ".join(kept), abstained=False, snippets=evidence, meta=meta, evidence=ev)

    def _support_checker(self):
        if self._checker is None:
            from .support import SupportChecker

            self._checker = SupportChecker(self.store.ingest_embedder.embed)
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
                      abstained=abstained, invalid_citations=checked.invalid, meta=dict(draft.meta),
                      evidence=evidence)
