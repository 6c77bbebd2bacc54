"""OpenAI's wire shapes: errors, the chat request, SSE chunks, and text that is safe to stream."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse

from ..citations import check_markers
from ..errors import (
    ConfigError,
    IndexCorruptError,
    IndexMismatchError,
    IndexMissingError,
    LLMError,
    ModelFilesError,
    QuestionError,
    RagError,
)

log = logging.getLogger(__name__)


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


def text_of(content: Any) -> str | None:
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


def number_param(body: dict, name: str, lo: float, hi: float, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise ApiError(400, f"'{name}' must be {kind} between {lo:g} and {hi:g}", code="invalid_value", param=name)
    return value


def clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[:n] + "..."


# --- text that is safe to stream -----------------------------------------------------------------

class Settled:
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


def sse_chunk(base: dict[str, Any], delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    payload = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()
