"""A small OpenAI-compatible HTTP server for tests: the real `openai` client talks to it
over loopback. It answers from a script, records requests, and can misbehave on demand."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

import numpy as np


@dataclass
class Fault:
    status: int = 0  # HTTP status to return instead of an answer
    delay: float = 0.0  # seconds to wait before answering
    headers: dict = field(default_factory=dict)
    body: bytes | None = None  # raw body (e.g. malformed JSON)
    cut_stream_after: int | None = None  # close the SSE stream after N chunks (a plain reply: after half its body)


class _QuietServer(ThreadingHTTPServer):
    """A client that hangs up mid-reply (the CLI gives up after an HTTP 503) is no server error:
    socketserver would print its traceback to stderr, where tests look for the CLI's own."""

    def handle_error(self, request, client_address):
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class OpenAIServer:
    def __init__(self, reply: Callable[[list[dict]], str] | str = "The sources say so [1]."):
        self.reply = reply
        self.requests: list[dict] = []
        self.faults: list[Fault] = []  # consumed one per request
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "OpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _text_for(self, messages: list[dict]) -> str:
        return self.reply(messages) if callable(self.reply) else self.reply

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload: bytes, ctype="application/json", headers=None):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                server.requests.append({"path": self.path, "body": body,
                                        "headers": {k.lower(): v for k, v in self.headers.items()}})
                fault = server.faults.pop(0) if server.faults else Fault()
                if fault.delay:
                    time.sleep(fault.delay)
                if fault.status:
                    err = {"error": {"message": "injected fault", "type": "server_error", "code": fault.status}}
                    return self._send(fault.status, json.dumps(err).encode(), headers=fault.headers)
                if fault.body is not None:
                    return self._send(200, fault.body)
                if self.path.endswith("/embeddings"):
                    return self._embeddings(body)
                if self.path.endswith("/chat/completions"):
                    return self._chat(body, fault)
                self._send(404, b'{"error": {"message": "not found"}}')

            def _embeddings(self, body):
                inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                data = []
                for i, text in enumerate(inputs):
                    rng = np.random.default_rng(abs(hash(text)) % (2**32))
                    vec = rng.normal(size=64)
                    data.append({"object": "embedding", "index": i, "embedding": (vec / np.linalg.norm(vec)).tolist()})
                payload = {"object": "list", "data": data, "model": body.get("model", "stub"),
                           "usage": {"prompt_tokens": 1, "total_tokens": 1}}
                self._send(200, json.dumps(payload).encode())

            def _chat(self, body, fault: Fault):
                text = server._text_for(body["messages"])
                base = {"id": "chatcmpl-test", "created": int(time.time()), "model": body.get("model", "stub")}
                if not body.get("stream"):
                    payload = {**base, "object": "chat.completion", "choices": [{
                        "index": 0, "finish_reason": "stop",
                        "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}
                    if fault.cut_stream_after is not None:  # a plain reply cut off: half the promised body
                        data = json.dumps(payload).encode()
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data[: len(data) // 2])
                        self.wfile.flush()
                        self.connection.shutdown(2)
                        return
                    return self._send(200, json.dumps(payload).encode())
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                words = text.split(" ")
                for n, w in enumerate(words):
                    if fault.cut_stream_after is not None and n >= fault.cut_stream_after:
                        self.wfile.flush()
                        self.connection.shutdown(2)
                        return
                    delta = {"content": (w if n == 0 else " " + w)}
                    if n == 0:
                        delta["role"] = "assistant"
                    chunk = {**base, "object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                end = {**base, "object": "chat.completion.chunk",
                       "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                self.wfile.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
                self.wfile.flush()

        return Handler
