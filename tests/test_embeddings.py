"""The offline all-MiniLM-L6-v2 embedder and its compatibility with Chroma's own function."""

from __future__ import annotations

import numpy as np
import pytest
from chromadb.api.types import EmbeddingFunction

from rag.embeddings import (MAX_TOKENS, ONNX_MODEL_ID, OnnxMiniLM, get_embedder, model_files,
                            provision_chroma_onnx_dir)
from rag.settings import Settings

CHROMA_FILES = {"config.json", "model.onnx", "special_tokens_map.json", "tokenizer_config.json",
                "tokenizer.json", "vocab.txt"}


@pytest.fixture(scope="module")
def emb():
    return get_embedder(Settings())


def test_get_embedder_is_cached_per_configuration(emb):
    assert get_embedder(Settings()) is emb
    assert isinstance(emb, OnnxMiniLM)
    assert emb.model_id == ONNX_MODEL_ID
    # a different configuration is a different object (and does not replace the cached one)
    other = get_embedder(Settings(embedding_batch_size=2))
    assert other is not emb and other.batch_size == 2
    assert get_embedder(Settings(embedding_batch_size=2)) is other
    assert get_embedder(Settings()) is emb


def test_vectors_are_normalised_384d(emb):
    texts = ["Face recognition with graph neural networks.", "x", "", "A much longer text " * 40]
    vecs = emb.embed(texts)
    assert vecs.shape == (4, 384)
    assert vecs.dtype == np.float32
    assert np.all(np.isfinite(vecs))
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert emb.embed([]).shape == (0, 384)
    one = emb.embed_one("Face recognition with graph neural networks.")
    assert one.shape == (384,)
    assert float(one @ vecs[0]) > 0.9999


def test_dynamic_padding_matches_single_embeddings(emb):
    texts = [
        "Hi.",
        "Graph convolutional networks cluster faces by cleaning noisy kNN edges in the structure space. " * 10,
        "A tiny face detector.",
        "Diffusion models swap faces between portraits while preserving identity and pose.",
        "token " * 400,  # longer than the model window: truncated the same way alone and in a batch
        "Melanoma segmentation with a Swin U-Net.",
    ]
    # batch size 32 puts everything in one padded batch; sorting by length must not mix rows up
    batched = emb.embed(texts)
    for i, t in enumerate(texts):
        single = emb.embed([t])[0]
        assert float(single @ batched[i]) > 0.999, (i, t[:30])
    # small batches (several padded widths) give the same vectors too
    small = get_embedder(Settings(embedding_batch_size=2))
    assert small.batch_size == 2
    np.testing.assert_allclose(small.embed(texts), batched, atol=2e-3)


def test_similar_texts_are_closer_than_unrelated(emb):
    a, b, c = emb.embed([
        "A neural network that recognises facial expressions from images.",
        "Recognising emotions on human faces with deep learning.",
        "Segmenting skin lesions in dermoscopy images of melanoma.",
    ])
    q = emb.embed_one("Which model detects very small faces with few parameters?")
    d, e = emb.embed(["EXTD: an extremely tiny face detector with less than 0.1 million parameters.",
                      "Link prediction on graphs with message passing neural networks."])
    assert float(a @ b) > float(a @ c) + 0.1
    assert float(q @ d) > float(q @ e) + 0.1


def test_count_tokens_is_untruncated_and_restores_truncation(emb):
    long = "word " * 600
    assert emb.count_tokens("hello world") == 4  # [CLS] hello world [SEP]
    assert emb.count_tokens(long) > MAX_TOKENS
    # truncation is back on for embedding
    assert len(emb.tokenizer.encode(long).ids) == MAX_TOKENS


def test_satisfies_chroma_embedding_function_protocol(emb):
    assert isinstance(emb, EmbeddingFunction)
    out = emb(["first document", "second one"])
    assert isinstance(out, list) and len(out) == 2
    assert all(np.asarray(v).shape == (384,) for v in out)
    assert emb.embed_query(["a query"])[0].shape == (384,)
    assert OnnxMiniLM.name() == "paper-rag-onnx-minilm"
    assert emb.default_space() == "cosine"
    rebuilt = OnnxMiniLM.build_from_config(emb.get_config())
    assert rebuilt.batch_size == emb.batch_size
    assert float(np.asarray(rebuilt(["same text"])[0]) @ np.asarray(emb(["same text"])[0])) > 0.9999


def test_chroma_collection_accepts_our_function(emb, tmp_path):
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    client = chromadb.PersistentClient(path=str(tmp_path / "c"), settings=ChromaSettings(anonymized_telemetry=False))
    col = client.create_collection("probe", embedding_function=emb, metadata={"hnsw:space": "cosine"})
    col.add(ids=["a", "b"], documents=["face clustering with graphs", "skin lesion segmentation"])
    res = col.query(query_texts=["clustering faces"], n_results=1)
    assert res["ids"][0] == ["a"]


def test_provision_chroma_onnx_dir_and_chroma_agrees_offline(emb, tmp_path):
    from chromadb.utils.embedding_functions.onnx_mini_lm_l6_v2 import ONNXMiniLM_L6_V2

    dest = provision_chroma_onnx_dir(tmp_path / "chroma-onnx")
    assert dest == tmp_path / "chroma-onnx"
    folder = dest / "onnx"
    assert {p.name for p in folder.iterdir()} == CHROMA_FILES
    onnx_path, _ = model_files()
    assert (folder / "model.onnx").stat().st_size == onnx_path.stat().st_size
    provision_chroma_onnx_dir(dest)  # idempotent
    assert {p.name for p in folder.iterdir()} == CHROMA_FILES

    old = ONNXMiniLM_L6_V2.DOWNLOAD_PATH
    ONNXMiniLM_L6_V2.DOWNLOAD_PATH = str(dest)
    try:
        chroma_fn = ONNXMiniLM_L6_V2()
        sentence = "Face clustering with adaptive neighbour discovery."
        theirs = np.asarray(chroma_fn([sentence])[0], dtype=np.float32)
    finally:
        ONNXMiniLM_L6_V2.DOWNLOAD_PATH = old
    assert not (dest / "onnx.tar.gz").exists()  # nothing was downloaded
    assert theirs.shape == (384,)
    ours = emb.embed_one(sentence)
    cos = float(theirs @ ours) / float(np.linalg.norm(theirs) * np.linalg.norm(ours))
    assert cos > 0.99
