"""The offline generative mode: the guard around the small model, the model itself in
process, and llama.cpp's OpenAI-compatible server behind the `openai` mode."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from rag import Assistant, Settings

from conftest import background_server, free_port

HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
needs_llama = pytest.mark.skipif(not HAS_LLAMA, reason="llama-cpp-python (extra [local]) is not installed; "
                                 "`make test` installs it")
Q = "Which method clusters faces by building clean graphs for GCNs?"


def _with_scripted_model(index, reply: str) -> Assistant:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    a = Assistant(Settings(data_dir=index, mode="local"))
    a._local_llm = FakeListChatModel(responses=[reply])  # the model is the outermost edge
    return a


def test_guard_keeps_supported_sentences_and_drops_the_rest(built_index):
    reply = ("Ada-NETS clusters faces by constructing clean graphs for GCNs [1]. "
             "It was first deployed on the Moon in 1850 to count craters [1]. "
             "It also uses source nine [9].")
    a = _with_scripted_model(built_index, reply)
    items = list(a.stream(Q))
    answer = items[-1]
    assert answer.mode == "local"
    assert answer.text == "Ada-NETS clusters faces by constructing clean graphs for GCNs [1]."
    assert answer.meta["dropped_sentences"] == 2 and "fallback" not in answer.meta
    assert [c.paper_id for c in answer.citations] == ["ada-nets-face-clustering-via-adaptive-neighbour"]
    assert "".join(x for x in items if isinstance(x, str)).strip() == answer.text  # streamed sentence by sentence


def test_guard_falls_back_to_extractive_when_nothing_survives(built_index):
    a = _with_scripted_model(built_index, "Faces are clustered with quantum annealing on Mars [1]. Uncited claim.")
    answer = a.ask(Q)
    assert answer.meta["fallback"] == "extractive" and answer.meta["dropped_sentences"] == 2
    assert answer.citations[0].paper_id == "ada-nets-face-clustering-via-adaptive-neighbour"
    assert "construct" in answer.text  # the extractive quote


def test_local_mode_abstains_like_extractive(built_index):
    a = _with_scripted_model(built_index, "Gait is recognised from silhouettes [1].")
    answer = a.ask("Which paper performs gait recognition from walking silhouettes?")
    assert answer.abstained and answer.citations == []


@needs_llama
@pytest.mark.slow
def test_smollm2_in_process(built_index):
    a = Assistant(Settings(data_dir=built_index, mode="local"))
    answer = a.ask(Q)
    retrieved = {c.paper_id for c in answer.contexts}
    assert answer.mode == "local" and not answer.abstained
    assert answer.citations and all(c.paper_id in retrieved for c in answer.citations)
    assert answer.invalid_citations == 0  # the guard checks markers before the answer is finished
    assert isinstance(answer.meta["dropped_sentences"], int)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    from rag.local_llm import smollm2_path

    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "4096", "--n_threads", "2", "--model_alias", "smollm2"]
    with background_server(cmd, f"{base}/models", tmp_path_factory.mktemp("llama") / "server.log", timeout=120):
        yield base


@needs_llama
@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True])
def test_openai_mode_against_llama_cpp_server(built_index, llama_server, stream):
    a = Assistant(Settings(data_dir=built_index, openai_base_url=llama_server, llm_model="smollm2",
                           request_timeout=120, max_retries=0))
    assert a.mode == "openai"
    if stream:
        items = list(a.stream(Q))
        answer = items[-1]
        assert len(items) > 2
    else:
        answer = a.ask(Q)
    retrieved = {c.paper_id for c in answer.contexts}
    assert answer.mode == "openai" and answer.text
    assert all(c.paper_id in retrieved for c in answer.citations)
    assert all(1 <= c.n <= len(answer.contexts) for c in answer.citations)
