"""The FastAPI app (`create_api`) and `serve`."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..conversation import references_text
from ..errors import RagError
from ..types import Answer
from .service import Service, chain_items, in_thread
from .wire import ApiError, api_error, clip, number_param, sse_chunk

log = logging.getLogger(__name__)

# --- the app -----------------------------------------------------------------------------------

def create_api(assistant) -> FastAPI:
    """The OpenAI-compatible app for one `Assistant` (shared by every request)."""
    svc = Service(assistant)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.get_running_loop().run_in_executor(svc.pool, svc.warm)
        yield
        svc.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="paper-rag", summary="OpenAI-compatible API: cited answers from research paper abstracts.",
                  version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.rag = svc
    _add_error_handlers(app)
    app.include_router(_v1(svc))

    @app.get("/healthz")
    async def healthz():
        papers = await asyncio.get_running_loop().run_in_executor(svc.pool, svc.assistant.count)
        return {"status": "ok", "papers": papers, "mode": svc.default_mode, "models": list(svc.models)}

    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error leaves in OpenAI's shape, an unexpected one without its details."""

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RagError)
    async def on_rag_error(request: Request, exc: RagError):
        return api_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            return ApiError(404, f"Invalid URL ({request.method} {clip(request.url.path)})",
                            code="not_found").response()
        if exc.status_code == 405:
            return ApiError(405, f"Method {request.method} not allowed for {clip(request.url.path)}",
                            code="method_not_allowed").response()
        return ApiError(exc.status_code, str(exc.detail), code=None).response()

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
        return ApiError(500, "The server had an error while processing your request.", type="server_error",
                        code="internal_error").response()


def _v1(svc: Service) -> APIRouter:
    """/v1: models, chat completions and ask, behind the optional bearer key."""

    async def auth(request: Request) -> None:
        svc.check_auth(request)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(auth)])

    def model(model_id: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": svc.created, "owned_by": "paper-rag"}

    @v1.get("/models")
    async def list_models():
        return {"object": "list", "data": [model(m) for m in svc.models]}

    @v1.get("/models/{model_id}")
    async def get_model(model_id: str):
        svc.mode_for(model_id)
        return model(model_id)

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        return await complete_chat(svc, request)

    @v1.post("/ask")
    async def ask(request: Request):
        """The JSON of `rag ask --json`: {"question", optional "k", "mode", "paper_ids"}."""
        return await ask_json(svc, request)

    return v1


async def complete_chat(svc: Service, request: Request):
    """A chat completion, whole or as server-sent events."""
    req = svc.parse_chat(await svc.read_json(request))
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    items = in_thread(svc.pool, lambda: svc.answer_items(req))
    try:
        first = await items.__anext__()  # failures before the first token get a real status
    except RagError as exc:
        await items.aclose()
        raise api_error(exc) from None
    if not req.stream:
        answer, plan = first, None
        async for item in chain_items([first], items):
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
    return StreamingResponse(_events(svc, req, base, chain_items([first], items), items),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(svc: Service, req, base: dict[str, Any], stream: AsyncIterator[Any],
                  items) -> AsyncIterator[bytes]:
    """The SSE body: a role chunk, text deltas, the references and extras, then [DONE]."""
    yield sse_chunk(base, {"role": "assistant", "content": ""})
    streamed = ""
    try:
        async for item in stream:
            if isinstance(item, tuple):
                answer, plan = item
                refs = references_text(answer.citations)
                if refs:
                    yield sse_chunk(base, {"content": refs})
                yield sse_chunk(base, {}, "stop", **svc.extras(req, answer, plan, streamed + refs))
            else:
                streamed += item
                yield sse_chunk(base, {"content": item})
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


async def ask_json(svc: Service, request: Request) -> dict[str, Any]:
    """`POST /v1/ask`: the body checked field by field, then `Assistant.ask` in the pool."""
    body = await svc.read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.", code="invalid_type")
    question = body.get("question")
    if not isinstance(question, str):
        raise ApiError(400, "'question' must be a string", code="invalid_value", param="question")
    svc.check_length(question, "question")
    k = number_param(body, "k", 1, 50, integer=True)
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
