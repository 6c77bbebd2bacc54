"""An OpenAI-compatible HTTP API over the assistant, so any OpenAI client can ask the papers.

- `GET  /v1/models`: one model per answer mode (`paper-rag` = the default mode,
  `paper-rag-extractive`, `paper-rag-local`, `paper-rag-openai` when available);
- `POST /v1/chat/completions`: plain or streamed (server-sent events, OpenAI's chunk shape,
  ending in `data: [DONE]`). The last user message is the question, earlier turns are the
  conversation. The reply's `content` is the answer with `[n]` markers followed by a
  `References:` list; `citations`, `usage` and `paper_rag` ride along (unknown fields are
  ignored by OpenAI clients); when streaming they come in the last chunk;
- `POST /v1/ask`: the JSON of `rag ask --json`;
- `GET  /healthz`: unauthenticated liveness and paper count.

`create_api(assistant)` builds the FastAPI app; `serve(assistant, host, port)` runs it with
uvicorn, on 127.0.0.1:8000 unless told otherwise. `RAG_API_KEY` turns on bearer-token
auth. Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.
Answers run in a pool of `RAG_API_CONCURRENCY` worker threads, never on the event loop.
This module imports no gradio.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .citations import check_markers
from .conversation import Plan, condense_question, followup, references_text, title_key, turns_from_messages
from .errors import (ConfigError, IndexCorruptError, IndexMismatchError, IndexMissingError, LLMError,
                     ModelFilesError, QuestionError, RagError)
from .types import ABSTAIN_TEXT, Answer

log = logging.getLogger(__name__)

__all__ = ["MODEL_PREFIX", "ApiError", "create_api", "serve"]

MODEL_PREFIX = "paper-rag"


# --- errors in OpenAI's shape ------------------------------------------------------------------

class ApiError(Exception):
    """An HTTP error with OpenAI's error body."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None, hint: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.headers, self.hint = headers, hint

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        if self.hint:
            err["hint"] = self.hint
        return {"error": err}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def api_error(exc: RagError) -> ApiError:
    """A `RagError` as an HTTP error. The message is the one the CLI prints, with its hint."""
    message = f"{exc.message} (hint: {exc.hint})" if exc.hint else exc.message
    if isinstance(exc, QuestionError):
        return ApiError(400, message, code="invalid_question", param="messages", hint=exc.hint)
    if isinstance(exc, LLMError):
        return ApiError(502, message, type="upstream_error", code="llm_error", hint=exc.hint)
    if isinstance(exc, (IndexMissingError, IndexCorruptError, IndexMismatchError, ModelFilesError, ConfigError)):
        return ApiError(503, message, type="server_error", code="unavailable", hint=exc.hint)
    return ApiError(500, message, type="server_error", code="internal_error", hint=exc.hint)


# --- requests ----------------------------------------------------------------------------------

@dataclass
class ChatRequest:
    model: str
    mode: str
    question: str
    history: list[tuple[str, str]] = field(default_factory=list)  # earlier (user, assistant) turns
    stream: bool = False
    llm_options: dict[str, Any] = field(default_factory=dict)
    prompt_texts: list[str] = field(default_factory=list)  # the messages up to the question: `usage.prompt_tokens`


def _text_of(content: Any) -> str | None:
    """A message's text: a string, or OpenAI's list of parts (text parts kept); None if invalid."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    return None


def _number(body: dict, name: str, lo: float, hi: float, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise ApiError(400, f"'{name}' must be {kind} between {lo:g} and {hi:g}", code="invalid_value", param=name)
    return value


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[:n] + "..."


# --- text that is safe to stream -----------------------------------------------------------------

class _Settled:
    """Streams the text the final answer will have. The final text goes through
    `check_markers` (invalid markers removed, spacing tidied, stripped), so each raw delta is
    re-checked the same way and only the part that can no longer change is released: up to
    an unclosed `[` and without trailing spaces. `finish()` releases the rest of the final
    text; plain and streamed replies then carry the same content."""

    def __init__(self, n_sources: int):
        self.n_sources = n_sources
        self.raw = ""
        self.sent = ""

    def feed(self, delta: str) -> str:
        self.raw += delta
        text = check_markers(self.raw, self.n_sources).text
        last_open = text.rfind("[")
        if last_open >= 0 and "]" not in text[last_open:]:
            text = text[:last_open]
        text = text.rstrip()
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        out, self.sent = text[len(self.sent):], text
        return out

    def finish(self, final: str) -> str:
        if not final.startswith(self.sent):
            log.warning("streamed text diverged from the checked answer; the final chunk's citations are authoritative")
            return ""
        out, self.sent = final[len(self.sent):], final
        return out


# --- the service -------------------------------------------------------------------------------

class _Service:
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
            from .chunking import get_encoding

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
            raise ApiError(404, f"The model `{_clip(model)}` does not exist or you do not have access to it. "
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
            text = _text_of(m.get("content")) if isinstance(m, dict) else None
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
        temperature = _number(body, "temperature", 0, 2)
        if temperature is not None:
            options["temperature"] = float(temperature)
        for name in ("max_tokens", "max_completion_tokens"):
            value = _number(body, name, 1, 1_000_000, integer=True)
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

    def answer_items(self, req: ChatRequest) -> Iterator[str | tuple[Answer, Plan]]:
        """Text deltas exactly as the final answer will read, then (answer, plan). A
        follow-up that the follow-up reading cannot answer is asked again as typed (as the
        chat does); its output is held back until it cannot be that abstention."""
        plan = self.plan(req)
        retry = plan.followup and req.mode != "openai"
        options = req.llm_options or None
        n_sources = self.settings.k if not plan.paper_ids else min(self.settings.k, len(plan.paper_ids))
        settled = _Settled(n_sources)
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
            again = _Settled(self.settings.k)
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


async def _in_thread(pool: ThreadPoolExecutor, produce: Callable[[], Iterator[Any]]) -> AsyncIterator[Any]:
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


def _chunk(base: dict[str, Any], delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    payload = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


# --- the app -----------------------------------------------------------------------------------

def create_api(assistant) -> FastAPI:
    """The OpenAI-compatible app for one `Assistant` (shared by every request)."""
    svc = _Service(assistant)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.get_running_loop().run_in_executor(svc.pool, svc.warm)
        yield
        svc.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="paper-rag", summary="OpenAI-compatible API: cited answers from research paper abstracts.",
                  version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.rag = svc

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RagError)
    async def on_rag_error(request: Request, exc: RagError):
        return api_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return ApiError(404, f"Invalid URL ({request.method} {_clip(request.url.path)})", code="not_found").response()
        if exc.status_code == 405:
            return ApiError(405, f"Method {request.method} not allowed for {_clip(request.url.path)}",
                            code="method_not_allowed").response()
        return ApiError(exc.status_code, str(exc.detail), code=None).response()

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return ApiError(500, "The server had an error while processing your request.", type="server_error",
                        code="internal_error").response()

    async def auth(request: Request) -> None:
        svc.check_auth(request)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(auth)])

    @v1.get("/models")
    async def list_models():
        return {"object": "list", "data": [_model(m) for m in svc.models]}

    @v1.get("/models/{model_id}")
    async def get_model(model_id: str):
        svc.mode_for(model_id)
        return _model(model_id)

    def _model(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": svc.created, "owned_by": "paper-rag"}

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        req = svc.parse_chat(await svc.read_json(request))
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        items = _in_thread(svc.pool, lambda: svc.answer_items(req))
        try:
            first = await items.__anext__()  # failures before the first token get a real status
        except RagError as exc:
            await items.aclose()
            raise api_error(exc) from None
        if not req.stream:
            answer, plan = first, None
            async for item in _chain([first], items):
                if isinstance(item, tuple):
                    answer, plan = item
            assert isinstance(answer, Answer) and plan is not None
            content = answer.text + references_text(answer.citations)
            return {"id": cid, "object": "chat.completion", "created": created, "model": req.model,
                    "system_fingerprint": None,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                                 "logprobs": None, "finish_reason": "stop"}],
                    **svc.extras(req, answer, plan, content)}

        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                "system_fingerprint": None}

        async def events() -> AsyncIterator[bytes]:
            yield _chunk(base, {"role": "assistant", "content": ""})
            streamed = ""
            try:
                async for item in _chain([first], items):
                    if isinstance(item, tuple):
                        answer, plan = item
                        refs = references_text(answer.citations)
                        if refs:
                            yield _chunk(base, {"content": refs})
                        yield _chunk(base, {}, "stop", **svc.extras(req, answer, plan, streamed + refs))
                    else:
                        streamed += item
                        yield _chunk(base, {"content": item})
            except Exception as exc:  # noqa: BLE001 - the status is sent: report in the stream, OpenAI-style
                err = api_error(exc) if isinstance(exc, RagError) else ApiError(
                    500, "The server had an error while processing your request.", "server_error", "internal_error")
                if not isinstance(exc, RagError):
                    log.error("unexpected error while streaming", exc_info=exc)
                yield f"data: {json.dumps(err.body(), ensure_ascii=False)}\n\n".encode()
                return
            finally:
                await items.aclose()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @v1.post("/ask")
    async def ask(request: Request):
        """The JSON of `rag ask --json`: {"question", optional "k", "mode", "paper_ids"}."""
        body = await svc.read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.", code="invalid_type")
        question = body.get("question")
        if not isinstance(question, str):
            raise ApiError(400, "'question' must be a string", code="invalid_value", param="question")
        svc.check_length(question, "question")
        k = _number(body, "k", 1, 50, integer=True)
        mode = body.get("mode")
        modes = sorted(set(svc.models.values()))
        if mode not in (None, "", *modes):
            raise ApiError(400, f"'mode' must be one of {', '.join(modes)}", code="invalid_value", param="mode")
        paper_ids = body.get("paper_ids")
        if paper_ids is not None and (not isinstance(paper_ids, list)
                                      or not all(isinstance(p, str) for p in paper_ids)):
            raise ApiError(400, "'paper_ids' must be a list of strings", code="invalid_value", param="paper_ids")
        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(
            svc.pool, lambda: svc.assistant.ask(question, k=k, mode=mode or None, paper_ids=paper_ids or None))
        return answer.to_dict()

    app.include_router(v1)

    @app.get("/healthz")
    async def healthz():
        papers = await asyncio.get_running_loop().run_in_executor(svc.pool, svc.assistant.count)
        return {"status": "ok", "papers": papers, "mode": svc.default_mode, "models": list(svc.models)}

    return app


async def _chain(first: list[Any], rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    for item in first:
        yield item
    async for item in rest:
        yield item


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(assistant, host: str | None = None, port: int | None = None, log_level: str = "info") -> None:
    """Run the API with uvicorn (blocking). host/port None = settings (127.0.0.1:8000)."""
    import uvicorn

    s = assistant.settings
    host = host or s.api_host
    port = s.api_port if port is None else port
    app = create_api(assistant)
    if not _is_loopback(host) and s.api_key is None:
        log.warning("the API is bound to %s without a key; set RAG_API_KEY", host)
        print(f"warning: serving on {host} without an API key (set RAG_API_KEY to require one)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False, proxy_headers=False,
                timeout_graceful_shutdown=10)

