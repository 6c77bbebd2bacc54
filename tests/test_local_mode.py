"""The generative modes: the guard around the model (both modes), the answer-mode registry,
SmolLM2 in process, and llama.cpp's OpenAI-compatible server behind the `openai` mode."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from rag import Assistant, Settings

from conftest import background_server, free_port
from openai_server import OpenAIServer

HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
needs_llama = pytest.mark.skipif(not HAS_LLAMA, reason="llama-cpp-python (extra [local]) is not installed; "
                                 "`make test` installs it")
Q = "Which method clusters faces by building clean graphs for GCNs?"


def _with_scripted_model(index, reply: str, **settings) -> Assistant:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    a = Assistant(Settings(data_dir=index, mode="local", **settings))
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
    assert answer.meta["guard"]["dropped"] == 2 and "fallback" not in answer.meta
    assert [c.paper_id for c in answer.citations] == ["ada-nets-face-clustering-via-adaptive-neighbour"]
    assert "".join(x for x in items if isinstance(x, str)).strip() == answer.text  # streamed sentence by sentence


def test_guard_falls_back_to_extractive_when_nothing_survives(built_index):
    a = _with_scripted_model(built_index, "Faces are clustered with quantum annealing on Mars [1]. Uncited claim.")
    answer = a.ask(Q)
    assert answer.meta["fallback"] == "extractive" and answer.meta["guard"]["dropped"] == 2
    assert answer.citations[0].paper_id == "ada-nets-face-clustering-via-adaptive-neighbour"
    assert "construct" in answer.text  # the extractive quote


def _shown_sentences_are_supported(a: Assistant, answer) -> None:
    """Every sentence shown cites a retrieved paper that supports it (the same check, run again)."""
    from rag.citations import claims

    by_n = {c.n: c for c in answer.contexts}
    checker = a.support_checker()
    for sentence, nums in claims(answer.text):
        assert nums and all(n in by_n for n in nums), sentence
        assert checker.supports(sentence, [by_n[n] for n in nums]), sentence


# An answer with one supported sentence, an invented number, an unmarked sentence that
# Ada-NETS supports, and FaceNet's claim cited to Ada-NETS (FaceNet is not retrieved).
SCRIPTED = ("Ada-NETS builds clean graphs for GCNs to cluster faces [1]. "
            "Ada-NETS reaches an FID of 1.00 on FaceForensics++ [1]. "
            "It detects noise edges in the structure space so that face features are not polluted. "
            "It learns a compact Euclidean embedding of faces with a triplet loss [1].")


@pytest.mark.parametrize("stream", [False, True])
def test_openai_mode_guard_strict_shows_nothing_unsupported(built_index, stream):
    with OpenAIServer(SCRIPTED) as srv:
        a = Assistant(Settings(data_dir=built_index, openai_base_url=srv.base_url, max_retries=0, guard="strict"))
        items = list(a.stream(Q)) if stream else [a.ask(Q)]
    answer = items[-1]
    assert answer.mode == "openai" and answer.contexts[0].paper_id == "ada-nets-face-clustering-via-adaptive-neighbour"
    assert answer.text == ("Ada-NETS builds clean graphs for GCNs to cluster faces [1]. It detects noise edges in the "
                           "structure space so that face features are not polluted [1].")
    assert answer.meta["guard"] == {"policy": "strict", "kept": 2, "dropped": 2, "flagged": 0, "attributed": 1,
                                    "recited": 0, "invented": 1}
    assert "1.00" not in answer.text and "Euclidean" not in answer.text
    _shown_sentences_are_supported(a, answer)
    if stream:
        assert "".join(items[:-1]).strip() == answer.text  # nothing streamed that the answer does not show


def test_openai_mode_guard_flag_is_the_default_and_marks_what_it_keeps(built_index):
    with OpenAIServer(SCRIPTED) as srv:
        a = Assistant(Settings(data_dir=built_index, openai_base_url=srv.base_url, max_retries=0))
        answer = a.ask(Q)
    assert answer.meta["guard"]["policy"] == "flag" and answer.meta["guard"]["flagged"] == 1
    assert answer.text.endswith("It learns a compact Euclidean embedding of faces with a triplet loss [1] (unverified).")
    assert "1.00" not in answer.text and answer.meta["guard"]["invented"] == 1  # dropped under flag too


def test_local_mode_guard_off_still_drops_invented_numbers(built_index):
    a = _with_scripted_model(built_index, SCRIPTED, guard="off")
    answer = a.ask(Q)
    assert answer.meta["guard"] == {"policy": "off", "kept": 3, "dropped": 1, "flagged": 0, "attributed": 0,
                                    "recited": 0, "invented": 1}
    assert "1.00" not in answer.text and "FID" not in answer.text


def test_unknown_mode_is_a_clear_error_and_modes_come_from_the_registry(built_index):
    from rag.errors import ConfigError
    from rag.modes import MODES

    a = Assistant(Settings(data_dir=built_index))
    with pytest.raises(ConfigError, match="unknown answer mode 'bogus'; known: extractive, openai, local") as info:
        a.ask(Q, mode="bogus")
    assert "RAG_MODE" in info.value.hint
    assert list(MODES) == ["extractive", "openai", "local"]
    assert {m: a.answer_mode(m).name for m in MODES} == {m: m for m in MODES}
    assert a.available_modes()[0] == "extractive" and "openai" not in a.available_modes()


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
    assert answer.mode == "local" and not answer.abstained and answer.meta["model"] == "smollm2-135m"
    assert answer.citations and all(c.paper_id in retrieved for c in answer.citations)
    assert answer.invalid_citations == 0  # the guard checks markers before the answer is finished
    g = answer.meta["guard"]
    assert g["policy"] == "strict" and g["kept"] + g["dropped"] >= 1 and g["flagged"] == 0
    if "fallback" not in answer.meta:
        _shown_sentences_are_supported(a, answer)  # under strict, only supported sentences are shown
    streamed = list(a.stream("What accuracy does FaceNet reach on LFW?"))
    final = streamed[-1]
    assert "".join(streamed[:-1]).strip() == final.text and final.meta["guard"]["policy"] == "strict"


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
        assert len(items) >= 2 and "".join(items[:-1]).strip() == answer.text  # released sentence by sentence
    else:
        answer = a.ask(Q)
    retrieved = {c.paper_id for c in answer.contexts}
    assert answer.mode == "openai" and answer.text and answer.meta["model"] == "smollm2"
    assert all(c.paper_id in retrieved for c in answer.citations)
    assert all(1 <= c.n <= len(answer.contexts) for c in answer.citations)
    assert answer.meta["guard"]["policy"] == "flag"
