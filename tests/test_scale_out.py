"""Beyond one machine: a real Chroma server, and embeddings from an HTTP endpoint."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from rag import Assistant, Settings
from rag.corpus import load_bundled
from rag.errors import IndexMismatchError
from rag.store import PaperStore

from conftest import background_server, free_port
from openai_server import OpenAIServer

QUESTIONS = ["Which method clusters faces by building clean graphs for GCNs?",
             "What accuracy does FaceNet reach on LFW?",
             "Which paper performs gait recognition from walking silhouettes?"]



@pytest.fixture
def chroma_server(tmp_path):
    chroma = shutil.which("chroma", path=str(Path(sys.executable).parent))
    if chroma is None:
        pytest.fail("the `chroma` command from the chromadb package is missing")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [chroma, "run", "--path", str(tmp_path / "server-data"), "--host", "127.0.0.1", "--port", str(port)]
    with background_server(cmd, f"{url}/api/v2/heartbeat", tmp_path / "chroma.log", timeout=60):
        yield url


@pytest.mark.slow
def test_same_answers_through_a_chroma_server(chroma_server, tmp_path):
    papers = load_bundled()[:40]
    remote = Assistant(Settings(data_dir=tmp_path / "client", chroma_url=chroma_server, mode="extractive"))
    report, _ = remote.ingest(papers=papers)
    assert len(report.added) == 40
    assert remote.store.ingest(papers).chunks_embedded == 0  # idempotent against the server too
    local = Assistant(Settings(data_dir=tmp_path / "embedded", mode="extractive"))
    local.ingest(papers=papers)
    for q in QUESTIONS:
        a, b = remote.ask(q), local.ask(q)
        assert a.text == b.text
        assert [c.paper_id for c in a.contexts] == [c.paper_id for c in b.contexts]
    assert not (tmp_path / "client" / "chroma").exists()  # nothing was stored locally


def test_embeddings_from_an_openai_compatible_endpoint(tmp_path):
    papers = load_bundled()[:8]
    with OpenAIServer() as srv:
        settings = Settings(data_dir=tmp_path / "remote-emb", embeddings="openai", embedding_model="stub-embed",
                            embeddings_base_url=srv.base_url, max_retries=0)
        store = PaperStore(settings)
        report = store.ingest(papers)
        assert report.chunks_embedded > 0
        assert store.ingest(papers).chunks_embedded == 0
        embed_calls = [r for r in srv.requests if r["path"].endswith("/embeddings")]
        assert embed_calls and all(r["body"]["model"] == "stub-embed" for r in embed_calls)
        answer = Assistant(settings, store=store).retrieve("face clustering")
        assert len(answer.contexts) == 5
        assert store.chunks.metadata["embedding_model"] == "openai:stub-embed"
    with pytest.raises(IndexMismatchError, match="stub-embed"):
        PaperStore(Settings(data_dir=tmp_path / "remote-emb"))  # the default ONNX model may not mix in
