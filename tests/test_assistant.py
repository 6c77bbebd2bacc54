"""The facade: defaults, injection, question hygiene, async forms."""

from __future__ import annotations

import asyncio

import pytest

from rag import Assistant, Settings
from rag.errors import IndexMissingError, QuestionError
from rag.store import PaperStore


def test_importing_rag_is_light():
    """`import rag` loads nothing heavy; `from rag import Assistant` loads no model and no UI."""
    import subprocess, sys

    def heavy(stmt: str) -> str:
        code = f"import sys; {stmt}; print([m for m in ('gradio', 'chromadb', 'onnxruntime') if m in sys.modules])"
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()

    assert heavy("import rag") == "[]"
    assert heavy("from rag import Assistant; Assistant()") == "['chromadb']"


def test_default_mode_is_offline_extractive():
    assert Assistant().mode == "extractive"


def test_parts_can_be_injected(built_index):
    settings = Settings(data_dir=built_index, k=3)
    store = PaperStore(settings)
    a = Assistant(settings, store=store, embeddings=store.embedder)
    answer = a.ask("Which paper proposes a face detector with an extremely tiny number of parameters?")
    assert a.store is store and len(answer.contexts) == 3
    assert answer.citations[0].paper_id == "extd-extremely-tiny-face-detector-via-iterative"


@pytest.mark.parametrize("bad", ["", "   ", "\n\t", "?!?...", "\x00\x01"])
def test_empty_or_wordless_questions_are_rejected(assistant, bad):
    with pytest.raises(QuestionError):
        assistant.ask(bad)


def test_overlong_question_is_truncated_with_notice(assistant):
    q = "Which paper clusters faces with graph convolutional networks? " + "padding " * 600
    answer = assistant.ask(q)
    assert len(answer.question) == assistant.settings.max_question_chars
    assert "cut" in answer.meta["notice"]


def test_control_characters_are_removed(assistant):
    answer = assistant.ask("Which paper\x07 clusters faces\x1b by building clean graphs for GCNs?")
    assert "\x07" not in answer.question and not answer.abstained


def test_k_and_paper_filter(assistant):
    ids = ["hallo-hierarchical-audio-driven-visual-synthesis", "ada-nets-face-clustering-via-adaptive-neighbour"]
    answer = assistant.ask("How are faces clustered?", k=8, paper_ids=ids)
    assert {c.paper_id for c in answer.contexts} <= set(ids)
    assert [c.n for c in answer.contexts] == list(range(1, len(answer.contexts) + 1))


def test_citations_only_point_at_retrieved_papers(assistant):
    for q in ["Which papers address face anti-spoofing?", "Compare FaceNet and SymFace.",
              "What datasets does the AU relation graph paper evaluate on?"]:
        answer = assistant.ask(q)
        retrieved = {c.paper_id for c in answer.contexts}
        assert all(c.paper_id in retrieved for c in answer.citations)
        assert answer.invalid_citations == 0


def test_aask_and_astream(assistant):
    async def go():
        answer = await assistant.aask("What accuracy does FaceNet reach on LFW?")
        items = [x async for x in assistant.astream("What accuracy does FaceNet reach on LFW?")]
        return answer, items

    answer, items = asyncio.run(go())
    assert "99.63%" in answer.text
    assert items[-1].text == answer.text and isinstance(items[0], str)


def test_asking_an_empty_index_says_how_to_fix(tmp_path):
    a = Assistant(Settings(data_dir=tmp_path / "empty"))
    with pytest.raises(IndexMissingError) as exc:
        a.ask("anything about faces?")
    assert "rag ingest" in exc.value.hint


@pytest.mark.slow
def test_ensure_index_builds_once(tmp_path):
    a = Assistant(Settings(data_dir=tmp_path / "fresh"))
    report = a.ensure_index()
    assert report is not None and len(report.added) == 119
    assert a.ensure_index() is None
    assert len(a.papers()) == 119 and a.papers("FaceNet")[0].id == "facenet-a-unified-embedding-for-face-recognition"
