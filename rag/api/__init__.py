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

from .app import create_api, serve
from .wire import MODEL_PREFIX, ApiError

__all__ = ["MODEL_PREFIX", "ApiError", "create_api", "serve"]
