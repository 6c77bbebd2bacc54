"""Settings: every bad value is one clear line naming the variable (or flag), the value and
what is allowed, derived from the field's own constraints; an empty RAG_DATA_DIR is an error."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from rag.cli import build_parser
from rag.errors import ConfigError
from rag.settings import Settings, allowed_values, load_settings


@pytest.mark.parametrize("var, value, expected", [
    ("RAG_K", "abc", "RAG_K='abc': must be a whole number from 1 to 50"),
    ("RAG_K", "0", "RAG_K='0': must be a whole number from 1 to 50"),
    ("RAG_K", "100000", "RAG_K='100000': must be a whole number from 1 to 50"),
    ("RAG_MODE", "bogus", "RAG_MODE='bogus': must be one of auto, extractive, openai, local"),
    ("RAG_EMBEDDINGS", "bogus", "RAG_EMBEDDINGS='bogus': must be one of onnx, openai"),
    ("RAG_TEMPERATURE", "hot", "RAG_TEMPERATURE='hot': must be a number from 0 to 2"),
    ("RAG_REQUEST_TIMEOUT", "0", "RAG_REQUEST_TIMEOUT='0': must be a number above 0"),
    ("RAG_UI_PORT", "99999", "RAG_UI_PORT='99999': must be a whole number from 0 to 65535"),
    ("RAG_EMBEDDING_THREADS", "-1", "RAG_EMBEDDING_THREADS='-1': must be a whole number at least 0"),
    ("RAG_DATA_DIR", "", "RAG_DATA_DIR='': must not be empty"),
    ("RAG_DATA_DIR", "   ", "RAG_DATA_DIR='   ': must not be empty"),
    ("RAG_CHROMA_URL", "ftp://host", "RAG_CHROMA_URL='ftp://host': must be an http(s)://host:port URL"),
    ("RAG_CHROMA_URL", "http://host:99999", "RAG_CHROMA_URL='http://host:99999': must be an http(s)://host:port URL"),
    ("RAG_COLLECTION", "bad name!", "RAG_COLLECTION='bad name!': must be 1-62 letters"),
])
def test_a_bad_variable_is_one_line_naming_it(monkeypatch, var, value, expected):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = info.value.message
    assert message.startswith(expected), message
    assert "\n" not in message  # one bad value, one line
    assert "pydantic" not in str(info.value) and "errors.pydantic.dev" not in str(info.value)
    assert "unset the variable" in info.value.hint


def test_several_bad_values_give_one_line_each(monkeypatch):
    monkeypatch.setenv("RAG_K", "abc")
    monkeypatch.setenv("RAG_MODE", "bogus")
    with pytest.raises(ConfigError) as info:
        load_settings(temperature=9)
    lines = info.value.message.splitlines()
    assert len(lines) == 3
    assert any(ln.startswith("RAG_K='abc'") for ln in lines)
    assert any(ln.startswith("RAG_MODE='bogus'") for ln in lines)
    assert any(ln.startswith("--temperature=9: must be a number from 0 to 2") for ln in lines)  # an override = a flag


def test_openai_aliases_are_named_as_set(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:8000/v1")
    assert load_settings().openai_base_url == "http://localhost:8000/v1"
    from rag.settings import env_name

    assert env_name("openai_base_url") == "OPENAI_BASE_URL"
    assert env_name("k") == "RAG_K"


def test_allowed_values_come_from_the_field_constraints():
    # Not a hand-written table: change a bound in Settings and the message follows.
    for name, info in Settings.model_fields.items():
        text = allowed_values(name)
        for m in info.metadata:
            for bound in ("ge", "le", "gt", "lt"):
                if hasattr(m, bound):
                    assert f"{getattr(m, bound):g}" in text, (name, text)
    assert allowed_values("mmr_lambda") == "a number from 0 to 1"
    assert allowed_values("max_upload_mb") == "a number above 0"


def test_data_dir_expands_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("RAG_DATA_DIR", "~/papers")
    assert load_settings().data_dir == tmp_path / "papers"


def test_good_values_load(monkeypatch, tmp_path):
    monkeypatch.setenv("RAG_K", "7")
    monkeypatch.setenv("RAG_CHROMA_URL", "http://localhost:8000")
    s = load_settings(mode="extractive", data_dir=tmp_path)
    assert (s.k, s.mode, s.data_dir, s.chroma_url) == (7, "extractive", tmp_path, "http://localhost:8000")


def test_assistant_default_settings_go_through_load_settings(monkeypatch):
    from rag import Assistant

    monkeypatch.setenv("RAG_K", "0")
    with pytest.raises(ConfigError, match="RAG_K='0'"):
        Assistant()


@pytest.mark.parametrize("argv, flag, allowed", [
    (["ask", "--k", "0", "q"], "--k", "a whole number from 1 to 50"),
    (["ask", "--k", "-1", "q"], "--k", "a whole number from 1 to 50"),
    (["ask", "--k", "100000", "q"], "--k", "a whole number from 1 to 50"),
    (["ask", "--k", "abc", "q"], "--k", "a whole number from 1 to 50"),
    (["eval", "--k", "0"], "--k", "a whole number from 1 to 50"),
    (["serve", "--port", "99999"], "--port", "a whole number from 0 to 65535"),
    (["serve", "--port", "-1"], "--port", "a whole number from 0 to 65535"),
    (["eval", "--concurrency", "0"], "--concurrency", "a whole number, at least 1"),
    (["eval", "--limit", "-1"], "--limit", "a whole number, at least 1"),
    (["--data-dir", "", "ask", "q"], "--data-dir", "must not be empty"),
])
def test_bad_flags_are_refused_by_the_parser(argv, flag, allowed, capsys):
    """`--k 0` used to mean 'the default'; now every flag is checked against its range."""
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and allowed in err, err


def test_flags_in_range_parse():
    args = build_parser().parse_args(["ask", "--k", "50", "q"])
    assert args.k == 50
    args = build_parser().parse_args(["serve", "--port", "0"])
    assert args.port == 0
    args = build_parser().parse_args(["--data-dir", "~/x", "papers"])
    assert args.data_dir == Path("~/x").expanduser()
    assert isinstance(build_parser(), argparse.ArgumentParser)
