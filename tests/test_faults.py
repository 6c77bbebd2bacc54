"""Failing dependencies: the LLM server misbehaves in every way we know; the answer is a
clear LLMError (CLI/UI turn it into a message), never a traceback or a hang."""

from __future__ import annotations

import time

import pytest

from rag import Assistant, Settings
from rag.errors import LLMError

from openai_server import Fault, OpenAIServer

Q = "Which paper clusters faces by building clean graphs for GCNs?"


def _assistant(index, srv, **kw):
    return Assistant(Settings(data_dir=index, openai_base_url=srv.base_url, openai_api_key="sk-test", **kw))


@pytest.mark.parametrize("stream", [False, True])
def test_timeout(built_index, stream):
    with OpenAIServer("late [1].") as srv:
        srv.faults = [Fault(delay=3)] * 3
        a = _assistant(built_index, srv, request_timeout=0.5, max_retries=0)
        a.retrieve(Q)  # warm up: the time limit is about the LLM call,
        assert a.llm is not None  # not about importing its client (imported on first use since issue 15)
        t = time.perf_counter()
        with pytest.raises(LLMError, match="did not answer within"):
            list(a.stream(Q)) if stream else a.ask(Q)
        assert time.perf_counter() - t < 3


def test_429_with_retry_after_is_retried(built_index):
    with OpenAIServer("Ada-NETS [1].") as srv:
        srv.faults = [Fault(status=429, headers={"Retry-After": "1"})]
        a = _assistant(built_index, srv, max_retries=2)
        t = time.perf_counter()
        answer = a.ask(Q)
        assert answer.citations and len(srv.requests) == 2
        assert time.perf_counter() - t >= 0.9  # honoured Retry-After


def test_429_that_persists_is_a_clear_error(built_index):
    with OpenAIServer() as srv:
        srv.faults = [Fault(status=429, headers={"Retry-After": "0"})] * 5
        a = _assistant(built_index, srv, max_retries=1)
        with pytest.raises(LLMError, match="rate limiting"):
            a.ask(Q)
        assert len(srv.requests) == 2  # bounded: one try plus one retry


def test_500_then_success(built_index):
    with OpenAIServer("Ada-NETS [1].") as srv:
        srv.faults = [Fault(status=500), Fault(status=503)]
        answer = _assistant(built_index, srv, max_retries=2).ask(Q)
        assert answer.citations[0].n == 1 and len(srv.requests) == 3


def test_malformed_json(built_index):
    with OpenAIServer() as srv:
        srv.faults = [Fault(body=b"{this is not json")]
        with pytest.raises(LLMError):
            _assistant(built_index, srv, max_retries=0).ask(Q)


def test_stream_cut_mid_answer(built_index):
    with OpenAIServer("one two three four five six seven eight [1].") as srv:
        srv.faults = [Fault(cut_stream_after=3)]
        a = _assistant(built_index, srv, max_retries=0)
        got = []
        with pytest.raises(LLMError):
            for piece in a.stream(Q):
                got.append(piece)
        assert all(isinstance(x, str) for x in got)  # no half-built Answer was handed out


def test_connection_refused(built_index):
    a = Assistant(Settings(data_dir=built_index, openai_base_url="http://127.0.0.1:9/v1", max_retries=1))
    with pytest.raises(LLMError, match="cannot reach"):
        a.ask(Q)


def test_assistant_keeps_working_after_failures(built_index):
    with OpenAIServer("Ada-NETS [1].") as srv:
        a = _assistant(built_index, srv, max_retries=0)
        srv.faults = [Fault(status=500)]
        with pytest.raises(LLMError):
            a.ask(Q)
        assert a.ask(Q).citations  # same object, next request fine
        assert a.ask(Q, mode="extractive").mode == "extractive"
