"""What the routes share: the assistant, the model table, the worker pool, parsing and answering."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import Request

from ..conversation import Plan, condense_question, followup, title_key, turns_from_messages
from ..errors import (
    ConfigError,
    RagError,
)
from ..types import ABSTAIN_TEXT, Answer
from .wire import MODEL_PREFIX, ApiError, ChatRequest, Settled, clip, number_param, text_of

log = logging.getLogger(__name__)

# --- the service -------------------------------------------------------------------------------

class Service:
    """What the routes share: the assistant, the model table, the worker pool, the tokenizer."""

    def __init__(self, assistant):
        self.assistant = assistant
        self.settings = assistant.settings
        key = self.settings.api_key.get_secret_value() if self.settings.api_key is not None else None
        if key is not None and not key.strip():
            raise ConfigError("RAG_API_KEY is set but empty",
                              "Set RAG_API_KEY to a long random string, or unset it to run without auth.")
        self._key = key.strip().encode() if key else None
        self.default_mode = assistant.mode
        self.models: dict[str, str] = {MODEL_PREFIX: self.default_mode}
        for mode in assistant.available_modes():
            self.models[f"{MODEL_PREFIX}-{mode}"] = mode
        self.created = int(time.time())
        self.pool = ThreadPoolExecutor(max_workers=self.settings.api_concurrency, thread_name_prefix="rag-api")
        self._encoding: Any = None
        self._warm_lock = threading.Lock()

    # set-up ----------------------------------------------------------------------------------
    def warm(self) -> None:
        """Build the shared parts once, before requests race to build them lazily."""
        with self._warm_lock:
            self.encoding()
            try:
                a = self.assistant
                _ = a.store, a.retriever, a.extractive
                if "openai" in self.models.values():
                    _ = a.llm
                if "local" in self.models.values():
                    _ = a.local_llm
            except RagError as exc:  # reported per request (503) instead of refusing to start
                log.warning("paper-rag API: %s", exc.message)

    def encoding(self):
        if self._encoding is None:
            from ..chunking import get_encoding

            self._encoding = get_encoding("cl100k_base", str(self.settings.cache_dir / "tiktoken"))
        return self._encoding

    def tokens(self, texts: Sequence[str]) -> int:
        enc = self.encoding()
        return sum(len(enc.encode(t, disallowed_special=())) for t in texts if t)

    # auth and bodies ---------------------------------------------------------------------------
    def check_auth(self, request: Request) -> None:
        if self._key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        headers = {"WWW-Authenticate": "Bearer"}
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "You didn't provide an API key: send 'Authorization: Bearer <key>' "
                           "(the key set in RAG_API_KEY on the server).", code="missing_api_key", headers=headers)
        if not hmac.compare_digest(token.strip().encode("utf-8", "surrogateescape"), self._key):
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key", headers=headers)

    async def read_json(self, request: Request) -> Any:
        limit = self.settings.api_max_body_kb * 1024
        too_large = ApiError(413, f"The request body is larger than {self.settings.api_max_body_kb} KiB "
                             "(RAG_API_MAX_BODY_KB).", code="request_too_large")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise too_large
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        try:
            return json.loads(bytes(body))
        except (ValueError, RecursionError):
            raise ApiError(400, "We could not parse the JSON body of your request.", code="invalid_json") from None

    # parsing ---------------------------------------------------------------------------------
    def mode_for(self, model: Any) -> tuple[str, str]:
        if model is None or model == "":
            return MODEL_PREFIX, self.default_mode
        if not isinstance(model, str):
            raise ApiError(400, "'model' must be a string", code="invalid_value", param="model")
        if model not in self.models:
            raise ApiError(404, f"The model `{clip(model)}` does not exist or you do not have access to it. "
                           f"Models: {', '.join(self.models)}.", code="model_not_found", param="model")
        return model, self.models[model]

    def check_length(self, question: str, param: str) -> None:
        limit = self.settings.max_question_chars
        n = len(" ".join(question.split()))
        if n > limit:
            raise ApiError(400, f"The question is {n} characters long; the limit is {limit} (RAG_MAX_QUESTION_CHARS). "
                           "Shorten it.", code="context_length_exceeded", param=param)

    def parse_chat(self, body: Any) -> ChatRequest:
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_type")
        model, mode = self.mode_for(body.get("model"))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "'messages' must be a non-empty list of {role, content} objects.",
                           code="invalid_value", param="messages")
        parsed: list[tuple[str, str]] = []
        for i, m in enumerate(messages):
            text = text_of(m.get("content")) if isinstance(m, dict) else None
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or text is None:
                raise ApiError(400, f"messages[{i}] must be an object with a string 'role' and a text 'content'.",
                               code="invalid_value", param=f"messages[{i}]")
            parsed.append((m["role"], text))
        users = [i for i, (role, _) in enumerate(parsed) if role == "user"]
        if not users:
            raise ApiError(400, "The messages contain no user message: the last user message is the question.",
                           code="missing_user_message", param="messages")
        last = users[-1]
        question = parsed[last][1]
        self.check_length(question, "messages")
        stream = body.get("stream", False)
        if stream is not None and not isinstance(stream, bool):
            raise ApiError(400, "'stream' must be true or false", code="invalid_value", param="stream")
        n = body.get("n")
        if n not in (None, 1):
            raise ApiError(400, "Only n=1 is supported.", code="invalid_value", param="n")
        options: dict[str, Any] = {}
        temperature = number_param(body, "temperature", 0, 2)
        if temperature is not None:
            options["temperature"] = float(temperature)
        for name in ("max_tokens", "max_completion_tokens"):
            value = number_param(body, name, 1, 1_000_000, integer=True)
            if value is not None:
                options["max_tokens"] = value
        history: list[tuple[str, str]] = []
        pending: str | None = None
        for role, text in parsed[:last]:
            if role == "user":
                pending = text
            elif role == "assistant" and pending is not None:
                history.append((pending, text))
                pending = None
        prompt = [text for _, text in parsed[: last + 1]]
        return ChatRequest(model=model, mode=mode, question=question, history=history, stream=bool(stream),
                           llm_options=options, prompt_texts=prompt)

    # answering (in a worker thread) ---------------------------------------------------------------
    def plan(self, req: ChatRequest) -> Plan:
        """Earlier turns -> the question to search, as the chat UI reads it."""
        if req.mode == "openai":
            if not req.history:
                return Plan(req.question)
            turns = turns_from_messages(req.history, lambda _: None, resolve_followups=False)
            standalone = condense_question(self.assistant, turns, req.question)
            if standalone != req.question:
                return Plan(standalone, None, f"Follow-up, searched as: {standalone}", True)
            return Plan(req.question)
        if not req.history:
            return followup(req.question, None)

        def paper_id_for(title: str) -> str | None:
            """A title from a references list -> its paper id (looked up by its normalised title)."""
            return self.assistant.store.paper_id_by_title(title, lambda a, b: title_key(a) == title_key(b))

        turns = turns_from_messages(req.history, paper_id_for)
        return followup(req.question, turns[-1] if turns else None)

    def answer_items(self, req: ChatRequest) -> Generator[str | tuple[Answer, Plan], None, None]:
        """Text deltas exactly as the final answer will read, then (answer, plan). A
        follow-up that the follow-up reading cannot answer is asked again as typed (as the
        chat does); its output is held back until it cannot be that abstention."""
        plan = self.plan(req)
        retry = plan.followup and req.mode != "openai"
        options = req.llm_options or None
        n_sources = self.settings.k if not plan.paper_ids else min(self.settings.k, len(plan.paper_ids))
        settled = Settled(n_sources)
        held = ""
        holding = retry
        answer: Answer | None = None
        for item in self.assistant.stream(plan.question, mode=req.mode, paper_ids=plan.paper_ids,
                                          llm_options=options):
            if isinstance(item, Answer):
                answer = item
                continue
            held += settled.feed(item)
            if holding and ABSTAIN_TEXT.startswith(settled.sent):
                continue
            holding = False
            if held:
                yield held
                held = ""
        assert answer is not None
        if retry and holding and answer.abstained:
            again = Settled(self.settings.k)
            second: Answer | None = None
            for item in self.assistant.stream(req.question, mode=req.mode, llm_options=options):
                if isinstance(item, Answer):
                    second = item
                elif out := again.feed(item):
                    yield out
            assert second is not None
            if out := again.finish(second.text):
                yield out
            yield second, Plan(req.question)
            return
        tail = held + settled.finish(answer.text)
        if tail:
            yield tail
        yield answer, plan

    # building replies ----------------------------------------------------------------------------
    def extras(self, req: ChatRequest, answer: Answer, plan: Plan, content: str) -> dict[str, Any]:
        prompt = self.tokens(req.prompt_texts)
        completion = self.tokens([content])
        citations = [{"n": c.n, "paper_id": c.paper_id, "title": c.title, "url": c.url, "snippet": c.snippet}
                     for c in answer.citations]
        info: dict[str, Any] = {"mode": answer.mode, "abstained": answer.abstained, "searched_as": answer.question,
                                "invalid_citations": answer.invalid_citations,
                                "timings_ms": {k: round(v, 1) for k, v in answer.timings_ms.items()}}
        if plan.note:
            info["note"] = plan.note
        if answer.meta:
            info["meta"] = answer.meta
        return {"citations": citations,
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion},
                "paper_rag": info}


async def in_thread(
    pool: ThreadPoolExecutor, produce: Callable[[], Generator[Any, None, None]]
) -> AsyncGenerator[Any, None]:
    """Iterate a blocking generator in the worker pool without blocking the event loop. If the
    consumer stops early (client gone), the generator is closed at its next item."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    done = object()
    stop = threading.Event()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            stop.set()

    def run() -> None:
        gen = produce()
        try:
            for item in gen:
                if stop.is_set():
                    break
                put(item)
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which maps it
            put(exc)
        finally:
            gen.close()
            put(done)

    loop.run_in_executor(pool, run)
    try:
        while (item := await queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


async def chain_items(first: list[Any], rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    for item in first:
        yield item
    async for item in rest:
        yield item
