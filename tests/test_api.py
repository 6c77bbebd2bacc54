"""The OpenAI-compatible API (rag/api.py) served by uvicorn on a free loopback port, driven
by real clients: the official `openai` client, LangChain's `ChatOpenAI` and raw httpx."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
from conftest import background_server, free_port, serve_api
from openai_server import Fault, OpenAIServer

from rag import Assistant, Settings
from rag.conversation import references_text, split_reply, turns_from_messages
from rag.types import ABSTAIN_TEXT, Citation

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

ADA = "Which paper clusters faces by building clean graphs for GCNs?"
ADA_ID = "ada-nets-face-clustering-via-adaptive-neighbour"
FACENET = "What accuracy does FaceNet reach on LFW?"
FACENET_ID = "facenet-a-unified-embedding-for-face-recognition"
SWAP = "Which papers perform face swapping with diffusion models?"
UNANSWERABLE = "How accurate is the zebra stripe counting network?"
SENTINEL = "rag-api-SENTINEL-0123456789abcdef"
MARKER = re.compile(r"\[(\d+)\]")


@pytest.fixture(scope="module")
def api_url(assistant):
    with serve_api(assistant) as url:
        yield url


@pytest.fixture
def client(api_url):
    return openai.OpenAI(base_url=f"{api_url}/v1", api_key="any-key-works", max_retries=0, timeout=120)


def _stream(client, **kwargs):
    """(content, chunks) of a streamed completion."""
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return content, chunks


def _assert_error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and "code" in err
    if code is not None:
        assert err["code"] == code, err
    return err


# --- models ---------------------------------------------------------------------------------------

def test_models_list_one_model_per_mode(client, assistant):
    ids = [m.id for m in client.models.list()]
    want = ["paper-rag", "paper-rag-extractive"] + (["paper-rag-local"] if "local" in assistant.available_modes()
                                                     else [])
    assert ids == want  # no paper-rag-openai: no LLM is configured
    assert client.models.retrieve("paper-rag-extractive").owned_by == "paper-rag"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_models_include_openai_when_configured(built_index):
    a = Assistant(Settings(data_dir=built_index, openai_base_url="http://127.0.0.1:9/v1", max_retries=0))
    with serve_api(a) as url:
        ids = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
        health = httpx.get(f"{url}/healthz").json()
    assert ids[:3] == ["paper-rag", "paper-rag-extractive", "paper-rag-openai"]
    assert health["status"] == "ok" and health["mode"] == "openai" and health["papers"] == 119


# --- answers ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("question", [ADA, SWAP, FACENET, UNANSWERABLE])
def test_plain_and_streaming_give_the_same_answer_and_citations(client, question):
    msgs = [{"role": "user", "content": question}]
    plain = client.chat.completions.create(model="paper-rag", messages=msgs)
    content, chunks = _stream(client, model="paper-rag", messages=msgs)
    assert plain.object == "chat.completion" and plain.model == "paper-rag"
    assert plain.choices[0].message.role == "assistant" and plain.choices[0].finish_reason == "stop"
    assert content == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert last.citations == plain.citations  # OpenAI clients keep unknown fields as extras
    assert last.usage.completion_tokens == plain.usage.completion_tokens > 0
    assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens
    assert last.paper_rag["abstained"] == plain.paper_rag["abstained"]


def test_content_has_markers_then_a_references_list(client, assistant):
    reply = client.chat.completions.create(model="paper-rag", messages=[{"role": "user", "content": SWAP}])
    content = reply.choices[0].message.content
    answer, refs = split_reply(content)
    cites = reply.citations
    assert len(cites) >= 2 and {"n", "paper_id", "title", "url", "snippet"} <= set(cites[0])
    assert content == answer + references_text([Citation(n=c["n"], paper_id=c["paper_id"], title=c["title"],
                                                         snippet=c["snippet"], score=0, url=c["url"])
                                                for c in cites])
    assert "\n\nReferences:\n" in content
    used = {int(n) for n in MARKER.findall(answer)}
    assert used and used == {c["n"] for c in cites}  # every marker has a citation, every citation is used
    assert [(n, t) for n, t, _ in refs] == [(c["n"], c["title"]) for c in cites]
    papers = assistant.store.all_papers()
    for c in cites:
        assert c["title"] == papers[c["paper_id"]].title and c["snippet"][:60] in papers[c["paper_id"]].abstract


def test_abstained_answer_has_no_references(client):
    reply = client.chat.completions.create(model="paper-rag", messages=[{"role": "user", "content": UNANSWERABLE}])
    assert reply.choices[0].message.content == ABSTAIN_TEXT
    assert reply.citations == [] and reply.paper_rag["abstained"] is True


def test_system_messages_and_content_parts_are_accepted(api_url):
    body = {"model": "paper-rag-extractive", "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "text", "text": ADA}]}]}
    reply = httpx.post(f"{api_url}/v1/chat/completions", json=body, timeout=120).json()
    assert reply["citations"][0]["paper_id"] == ADA_ID and reply["paper_rag"]["mode"] == "extractive"


def test_ask_endpoint_equals_rag_ask_json(api_url, index_copy):
    got = httpx.post(f"{api_url}/v1/ask", json={"question": ADA, "k": 4}, timeout=120).json()
    env = {**os.environ, "RAG_DATA_DIR": str(index_copy)}
    out = subprocess.run([sys.executable, "-m", "rag.cli", "ask", "--json", "--k", "4", ADA], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    want = json.loads(out.stdout)
    assert set(got) == set(want)
    assert set(got["timings_ms"]) == set(want["timings_ms"])
    # Scores may differ in the third decimal between processes (ONNX reductions on threads).
    for key in set(want) - {"timings_ms", "retrieved", "citations"}:
        assert got[key] == want[key], key
    # ...and a query embedded in a different batch shifts them too, so papers whose scores nearly tie may trade
    # places (or the last place) in the retrieved list between processes. The cited papers must not change.
    assert len(got["citations"]) == len(want["citations"])
    for g, w in zip(got["citations"], want["citations"]):
        assert {k: v for k, v in g.items() if k != "score"} == {k: v for k, v in w.items() if k != "score"}
        assert abs(g["score"] - w["score"]) < 0.02
    got_by = {r["paper_id"]: r for r in got["retrieved"]}
    want_by = {r["paper_id"]: r for r in want["retrieved"]}
    assert got["retrieved"][0]["paper_id"] == want["retrieved"][0]["paper_id"]
    assert len(got_by.keys() ^ want_by.keys()) <= 2
    for pid in got_by.keys() & want_by.keys():
        g, w = got_by[pid], want_by[pid]
        assert g["title"] == w["title"] and abs(g["score"] - w["score"]) < 0.02
    assert got["citations"][0]["paper_id"] == ADA_ID and len(got["retrieved"]) == 4


# --- conversations --------------------------------------------------------------------------------

def test_followup_stays_on_the_paper_cited_before(client):
    first = client.chat.completions.create(model="paper-rag", messages=[{"role": "user", "content": FACENET}])
    assert [c["paper_id"] for c in first.citations] == [FACENET_ID]
    msgs = [{"role": "user", "content": FACENET},
            {"role": "assistant", "content": first.choices[0].message.content},
            {"role": "user", "content": "and what datasets did it use?"}]
    plain = client.chat.completions.create(model="paper-rag", messages=msgs)
    assert plain.paper_rag["searched_as"] == "what datasets did FaceNet use?"
    assert {c["paper_id"] for c in plain.citations} == {FACENET_ID}
    assert "LFW" in plain.choices[0].message.content
    content, chunks = _stream(client, model="paper-rag", messages=msgs)
    assert content == plain.choices[0].message.content and chunks[-1].citations == plain.citations
    # without the earlier turns, the same words are not about FaceNet
    alone = client.chat.completions.create(model="paper-rag", messages=msgs[-1:])
    assert alone.paper_rag["searched_as"] == "and what datasets did it use?"


def test_turns_are_rebuilt_from_the_references_the_api_wrote():
    cites = [Citation(n=1, paper_id="p1", title="Ada-NETS: Face Clustering, via GCNs", snippet="s", score=1,
                      url="https://example.org/ada"),
             Citation(n=2, paper_id="p2", title="Plain   title\nwith a newline", snippet="s", score=1)]
    content = "It clusters faces [1] and more [2]." + references_text(cites)
    assert content.endswith("References:\n[1] Ada-NETS: Face Clustering, via GCNs, https://example.org/ada\n"
                            "[2] Plain title with a newline")
    text, refs = split_reply(content.replace("\n", "\r\n"))
    assert text == "It clusters faces [1] and more [2]."
    assert refs == [(1, "Ada-NETS: Face Clustering, via GCNs", "https://example.org/ada"),
                    (2, "Plain title with a newline", None)]
    assert split_reply("No references here [1].") == ("No references here [1].", [])
    ids = {"ada-nets: face clustering, via gcns": "p1"}
    turns = turns_from_messages([("Which paper clusters faces?", content),
                                 ("and what datasets did it use?", "It uses IJB-C [1]." + references_text(cites[:1]))],
                                lambda t: ids.get(t.casefold()))
    assert turns[0].cited_ids == ["p1"] and turns[0].answer_text == text
    assert turns[1].asked == "what datasets did Ada-NETS use?"  # earlier follow-ups are re-read too
    assert turns[1].cited_titles == ["Ada-NETS: Face Clustering, via GCNs"]


def _condense_reply(messages):
    text = messages[-1]["content"]
    if "Standalone question:" in text:
        return "What datasets did FaceNet use?"
    return "FaceNet is evaluated on LFW and YouTube Faces DB [1]."


def test_openai_mode_condenses_the_conversation(built_index):
    with OpenAIServer(_condense_reply) as srv:
        a = Assistant(Settings(data_dir=built_index, openai_base_url=srv.base_url, max_retries=0))
        with serve_api(a) as url:
            c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
            first = c.chat.completions.create(model="paper-rag-openai", messages=[{"role": "user", "content": FACENET}])
            earlier = first.choices[0].message.content
            assert "References:" in earlier and first.paper_rag["mode"] == "openai"
            n = len(srv.requests)
            reply = c.chat.completions.create(model="paper-rag", messages=[
                {"role": "user", "content": FACENET}, {"role": "assistant", "content": earlier},
                {"role": "user", "content": "and what datasets did it use?"}])
    prompt = srv.requests[n]["body"]["messages"][-1]["content"]
    assert f"User: {FACENET}" in prompt and "Assistant: FaceNet is evaluated on LFW" in prompt
    assert "References:" not in prompt  # the references list is not part of the history
    assert "Follow-up question: and what datasets did it use?" in prompt
    assert reply.paper_rag["searched_as"] == "What datasets did FaceNet use?"
    assert reply.paper_rag["note"] == "Follow-up, searched as: What datasets did FaceNet use?"


# --- per-request options -------------------------------------------------------------------------------

def test_temperature_and_max_tokens_reach_the_upstream_per_request(built_index):
    with OpenAIServer("Ada-NETS clusters faces [1].") as srv:
        a = Assistant(Settings(data_dir=built_index, openai_base_url=srv.base_url, max_retries=0))
        with serve_api(a) as url:
            c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
            msgs = [{"role": "user", "content": ADA}]
            c.chat.completions.create(model="paper-rag", messages=msgs, temperature=0.7, max_tokens=99)
            _stream(c, model="paper-rag", messages=msgs, temperature=1.3, max_completion_tokens=42)
            c.chat.completions.create(model="paper-rag", messages=msgs)
    bodies = [r["body"] for r in srv.requests]
    limit = [b.get("max_completion_tokens", b.get("max_tokens")) for b in bodies]
    assert [b["temperature"] for b in bodies] == [0.7, 1.3, 0.0]
    assert limit == [99, 42, 512]  # the third request gets the settings again
    assert a.llm.temperature == 0.0 and a.llm.max_tokens == 512  # the shared model was not changed


class _FakeLlama:
    """Stands in for llama_cpp.Llama: records the request, streams a cited sentence."""

    def __init__(self):
        self.calls: list[dict] = []

    def create_chat_completion(self, stream=False, **kw):
        self.calls.append(kw)
        words = ["FaceNet ", "reaches ", "99.63% ", "on ", "LFW ", "[1]."]
        parts = [{"choices": [{"delta": {"content": w}, "finish_reason": None}]} for w in words]
        parts.append({"choices": [{"delta": {}, "finish_reason": "stop"}]})
        return iter(parts)


def test_per_request_options_reach_the_local_model(built_index):
    from rag.local_llm import LlamaCppChat

    a = Assistant(Settings(data_dir=built_index, mode="local"))
    a._local_llm = LlamaCppChat(model_path="unused.gguf", temperature=0.0, max_tokens=160)
    fake = _FakeLlama()
    a._local_llm._llama = fake
    with serve_api(a) as url:
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
        reply = c.chat.completions.create(model="paper-rag-local", messages=[{"role": "user", "content": FACENET}],
                                          temperature=0.9, max_tokens=20)
        c.chat.completions.create(model="paper-rag", messages=[{"role": "user", "content": FACENET}])
    assert reply.paper_rag["mode"] == "local"
    assert [(k["temperature"], k["max_tokens"]) for k in fake.calls] == [(0.9, 20), (0.0, 160)]
    assert a._local_llm.temperature == 0.0 and a._local_llm.max_tokens == 160


def test_extractive_mode_accepts_and_ignores_options(client):
    plain = client.chat.completions.create(model="paper-rag", messages=[{"role": "user", "content": ADA}])
    hot = client.chat.completions.create(model="paper-rag", messages=[{"role": "user", "content": ADA}],
                                         temperature=2, max_tokens=5)
    assert hot.choices[0].message.content == plain.choices[0].message.content


def test_streamed_llm_text_equals_the_checked_answer(built_index):
    """The final answer drops invalid markers and tidies spacing; the stream must say the same."""
    raw = "Ada-NETS clusters faces [1] . It builds clean graphs [9]. See [1, 2] and [Source 3]."
    with OpenAIServer(raw) as srv:
        a = Assistant(Settings(data_dir=built_index, openai_base_url=srv.base_url, max_retries=0))
        with serve_api(a) as url:
            c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
            plain = c.chat.completions.create(model="paper-rag", messages=[{"role": "user", "content": ADA}])
            content, chunks = _stream(c, model="paper-rag", messages=[{"role": "user", "content": ADA}])
    text = plain.choices[0].message.content
    # [9] pointed nowhere: removed, then the guard cites the paper that supports the sentence;
    # "See ..." states nothing any paper supports: the openai mode's default guard flags it.
    assert text.startswith("Ada-NETS clusters faces [1]. It builds clean graphs [1]. See [1][2] and [3] (unverified).")
    assert plain.paper_rag["invalid_citations"] == 1
    assert plain.paper_rag["meta"]["guard"]["attributed"] == 1 and plain.paper_rag["meta"]["guard"]["flagged"] == 1
    texts = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert content == text and len(texts) >= 4  # streamed sentence by sentence (then the references), not in one piece


# --- LangChain ---------------------------------------------------------------------------------------

def test_langchain_chat_openai_answers_with_markers(api_url):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=f"{api_url}/v1", api_key="x", model="paper-rag", max_retries=0, timeout=120)
    msg = llm.invoke(ADA)
    assert MARKER.search(msg.content) and "\n\nReferences:\n[1] Ada-NETS" in msg.content
    streamed = "".join(chunk.content for chunk in llm.stream(ADA))
    assert streamed == msg.content


# --- errors --------------------------------------------------------------------------------------------

LONG = "Which paper clusters faces " + "with graphs " * 400 + "?"


@pytest.mark.parametrize("body,status,code", [
    (b"{not json", 400, "invalid_json"),
    (b"[1, 2]", 400, "invalid_type"),
    (b'{"model": "paper-rag"}', 400, "invalid_value"),
    (b'{"model": "paper-rag", "messages": []}', 400, "invalid_value"),
    (b'{"model": "paper-rag", "messages": [{"role": "system", "content": "hi"}]}', 400, "missing_user_message"),
    (b'{"model": "paper-rag", "messages": [{"role": "assistant", "content": "hi"}]}', 400, "missing_user_message"),
    (b'{"model": "paper-rag", "messages": [{"role": "user", "content": 5}]}', 400, "invalid_value"),
    (b'{"model": "paper-rag", "messages": [{"role": "user", "content": "   "}]}', 400, "invalid_question"),
    (json.dumps({"model": "paper-rag", "messages": [{"role": "user", "content": LONG}]}).encode(), 400,
     "context_length_exceeded"),
    (b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}', 404, "model_not_found"),
    (b'{"model": "paper-rag", "temperature": 5, "messages": [{"role": "user", "content": "hi"}]}', 400,
     "invalid_value"),
    (b'{"model": "paper-rag", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}', 400,
     "invalid_value"),
    (b'{"model": "paper-rag", "stream": "yes", "messages": [{"role": "user", "content": "hi"}]}', 400,
     "invalid_value"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_bad_requests_get_openai_errors(api_url, body, status, code, stream):
    if stream and body.startswith(b'{"model"'):
        body = body.replace(b'{"model"', b'{"stream": true, "model"', 1)
    resp = httpx.post(f"{api_url}/v1/chat/completions", content=body, headers={"Content-Type": "application/json"},
                      timeout=60)
    _assert_error(resp, status, code)


def test_the_openai_client_raises_its_own_errors(client):
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": ADA}])
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="paper-rag", messages=[{"role": "user", "content": LONG}])
    assert info.value.code == "context_length_exceeded" and "limit is 2000" in info.value.message


def test_ask_endpoint_errors(api_url):
    url = f"{api_url}/v1/ask"
    _assert_error(httpx.post(url, content=b"{oops"), 400, "invalid_json")
    _assert_error(httpx.post(url, json={"k": 3}), 400, "invalid_value")
    _assert_error(httpx.post(url, json={"question": LONG}), 400, "context_length_exceeded")
    _assert_error(httpx.post(url, json={"question": ADA, "mode": "openai"}), 400, "invalid_value")
    _assert_error(httpx.post(url, json={"question": ADA, "k": 500}), 400, "invalid_value")
    _assert_error(httpx.post(url, json={"question": "?!"}), 400, "invalid_question")


def test_unknown_paths_and_methods(api_url):
    _assert_error(httpx.get(f"{api_url}/v1/nothing"), 404, "not_found")
    _assert_error(httpx.delete(f"{api_url}/v1/models"), 405, "method_not_allowed")
    _assert_error(httpx.get(f"{api_url}/v1/chat/completions"), 405, "method_not_allowed")


def test_body_too_large_is_413(built_index):
    a = Assistant(Settings(data_dir=built_index, mode="extractive", api_max_body_kb=8))
    big = json.dumps({"model": "paper-rag", "messages": [{"role": "user", "content": ADA}] * 200}).encode()
    assert len(big) > 8 * 1024
    with serve_api(a) as url:
        _assert_error(httpx.post(f"{url}/v1/chat/completions", content=big), 413, "request_too_large")

        def chunked():  # no Content-Length: the limit is enforced while reading
            for i in range(0, len(big), 1000):
                yield big[i:i + 1000]

        _assert_error(httpx.post(f"{url}/v1/chat/completions", content=chunked()), 413, "request_too_large")
        _assert_error(httpx.post(f"{url}/v1/ask", content=big), 413, "request_too_large")
        ok = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": ADA}]},
                        timeout=120)
        assert ok.status_code == 200 and ok.json()["model"] == "paper-rag"  # model defaults to paper-rag


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_llm_failure_is_502_with_the_cli_message(built_index, stream):
    with OpenAIServer("unused [1].") as srv:
        srv.faults = [Fault(status=500)] * 4
        a = Assistant(Settings(data_dir=built_index, openai_base_url=srv.base_url, max_retries=0))
        with serve_api(a) as url:
            body = {"model": "paper-rag", "stream": stream, "messages": [{"role": "user", "content": ADA}]}
            err = _assert_error(httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60), 502, "llm_error")
            c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
            with pytest.raises(openai.APIStatusError) as info:
                c.chat.completions.create(model="paper-rag", messages=body["messages"], stream=stream)
            assert len(srv.requests) == 2  # one upstream call per request (max_retries=0)
            srv.faults = []
            ok = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)  # upstream back: fine again
    assert err["message"].startswith("the language model server returned HTTP 500 (hint: Check OPENAI_BASE_URL")
    assert err["type"] == "upstream_error" and err["hint"].startswith("Check OPENAI_BASE_URL")
    assert info.value.status_code == 502
    assert ok.status_code == 200


def test_unreachable_llm_is_502(built_index):
    a = Assistant(Settings(data_dir=built_index, openai_base_url="http://127.0.0.1:9/v1", max_retries=0))
    with serve_api(a) as url:
        for stream in (False, True):
            body = {"model": "paper-rag", "stream": stream, "messages": [{"role": "user", "content": ADA}]}
            err = _assert_error(httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60), 502, "llm_error")
            assert err["message"].startswith("cannot reach the language model at http://127.0.0.1:9/v1")
        # the offline model of the same server still answers
        body["model"], body["stream"] = "paper-rag-extractive", False
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code == 200


def test_stream_cut_mid_answer_ends_with_an_error_event(built_index):
    with OpenAIServer("Ada-NETS clusters faces with clean graphs [1]. one two three four five six [1].") as srv:
        srv.faults = [Fault(cut_stream_after=8)]  # the first sentence is out, the second is cut
        a = Assistant(Settings(data_dir=built_index, openai_base_url=srv.base_url, max_retries=0))
        with serve_api(a) as url:
            c = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
            got = []
            with pytest.raises(openai.APIError, match="cut off"):
                for chunk in c.chat.completions.create(model="paper-rag", stream=True,
                                                       messages=[{"role": "user", "content": ADA}]):
                    got.append(chunk)
    assert got and got[0].choices[0].delta.role == "assistant"
    assert all(ch.choices[0].finish_reason is None for ch in got)  # never a "stop" for a broken answer


# --- auth and secrets -------------------------------------------------------------------------------

def test_no_key_configured_means_any_key_or_none_works(api_url):
    body = {"model": "paper-rag", "messages": [{"role": "user", "content": ADA}]}
    assert httpx.post(f"{api_url}/v1/chat/completions", json=body, timeout=60).status_code == 200
    assert httpx.get(f"{api_url}/v1/models", headers={"Authorization": "Bearer whatever"}).status_code == 200


def test_api_key_is_required_when_set(built_index):
    a = Assistant(Settings(data_dir=built_index, mode="extractive", api_key=SENTINEL))
    bodies: list[str] = []
    with serve_api(a) as url:
        chat = f"{url}/v1/chat/completions"
        body = {"model": "paper-rag", "messages": [{"role": "user", "content": ADA}]}
        for headers, code in [({}, "missing_api_key"), ({"Authorization": "Bearer wrong"}, "invalid_api_key"),
                              ({"Authorization": f"Basic {SENTINEL}"}, "missing_api_key"),
                              ({"Authorization": f"Bearer {SENTINEL}x"}, "invalid_api_key"),
                              ({"Authorization": "Bearer \u00e9t\u00e9".encode()}, "invalid_api_key")]:
            for resp in (httpx.post(chat, json=body, headers=headers), httpx.get(f"{url}/v1/models", headers=headers),
                         httpx.post(f"{url}/v1/ask", json={"question": ADA}, headers=headers)):
                _assert_error(resp, 401, code)
                assert resp.headers["www-authenticate"] == "Bearer"
                bodies.append(resp.text)
        # unauthenticated requests are refused before their body is read
        _assert_error(httpx.post(chat, content=b"{not json"), 401, "missing_api_key")
        good = openai.OpenAI(base_url=f"{url}/v1", api_key=SENTINEL, max_retries=0)
        reply = good.chat.completions.create(model="paper-rag", messages=body["messages"])
        assert reply.citations[0]["paper_id"] == ADA_ID
        content, _ = _stream(good, model="paper-rag", messages=body["messages"])
        bad = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        assert httpx.get(f"{url}/healthz").status_code == 200  # liveness needs no key
        bodies += [reply.model_dump_json(), content, httpx.get(f"{url}/healthz").text]
    assert all(SENTINEL not in b and SENTINEL[8:] not in b for b in bodies)
    assert a.settings.public_dict()["api_key"] == "***"


def test_empty_api_key_is_refused(built_index):
    from rag.api import create_api
    from rag.errors import ConfigError

    with pytest.raises(ConfigError, match="RAG_API_KEY is set but empty"):
        create_api(Assistant(Settings(data_dir=built_index, mode="extractive", api_key="  ")))


@pytest.mark.slow
def test_rag_api_command_serves_with_a_key_and_never_logs_it(index_copy, tmp_path, monkeypatch):
    """`rag api` as a user starts it: key from RAG_API_KEY, loopback bind, a real log file."""
    port = free_port()
    log = tmp_path / "api.log"
    for name, value in {"RAG_DATA_DIR": str(index_copy), "RAG_API_KEY": SENTINEL, "RAG_API_PORT": str(port)}.items():
        monkeypatch.setenv(name, value)  # the child inherits this environment
    with background_server([sys.executable, "-m", "rag.cli", "api"], f"http://127.0.0.1:{port}/healthz", log,
                           timeout=180):
        url = f"http://127.0.0.1:{port}"
        texts = [httpx.get(f"{url}/v1/models").text,
                 httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer nope"}).text,
                 httpx.post(f"{url}/v1/chat/completions", content=b"{x",
                            headers={"Authorization": f"Bearer {SENTINEL}"}).text]
        c = openai.OpenAI(base_url=f"{url}/v1", api_key=SENTINEL, max_retries=0)
        reply = c.chat.completions.create(model="paper-rag", messages=[{"role": "user", "content": ADA}])
        texts.append(reply.model_dump_json())
        assert reply.citations[0]["paper_id"] == ADA_ID
    out = log.read_text()
    assert f"OpenAI-compatible API at http://127.0.0.1:{port}/v1" in out and "bearer key required" in out
    assert '"POST /v1/chat/completions HTTP/1.1" 200' in out  # the access log is on
    assert all(SENTINEL not in t for t in texts) and SENTINEL not in out and SENTINEL[8:] not in out


def test_api_and_its_command_do_not_import_gradio(index_copy):
    code = ("import sys, rag.api, rag.conversation\n"
            "import rag.api as api\n"
            "api.serve = lambda *a, **k: print('serve called')\n"
            "from rag.cli import main\n"
            f"main(['--data-dir', {str(index_copy)!r}, 'api', '--mode', 'extractive'])\n"
            "assert 'gradio' not in sys.modules, 'gradio imported'\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "serve called" in out.stdout


def test_help_lists_the_api_command():
    out = subprocess.run([sys.executable, "-m", "rag.cli", "api", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "--host" in out.stdout and "--port" in out.stdout


# --- load -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_concurrent_chat_requests_all_succeed(api_url):
    from load_api import run_load

    questions = [ADA, FACENET, "Which papers address face anti-spoofing?",
                 "Which paper performs gait recognition from walking silhouettes?"]
    result = run_load(f"{api_url}/v1", questions, requests=60, concurrency=10)
    assert result["errors"] == 0, result["error_samples"]
    assert result["requests"] == 60
