"""Prompts load strictly and ship inside the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rag.errors import ConfigError
from rag.prompting import load_prompt, placeholders, render

ROOT = Path(__file__).resolve().parents[1]


def test_every_prompt_file_declares_what_the_code_fills():
    assert placeholders(load_prompt("answer_user", {"sources", "question"})) == {"sources", "question"}
    assert render("condense_question", history="h", question="q").endswith("Standalone question:\n")


def test_missing_variable_raises():
    with pytest.raises(ConfigError, match="missing"):
        render("answer_user", question="only one")


def test_unknown_variable_raises():
    with pytest.raises(ConfigError, match="unknown"):
        load_prompt("answer_user", {"question"})


def test_missing_prompt_file_raises():
    with pytest.raises(ConfigError, match="missing from the package"):
        load_prompt("no_such_prompt", set())


@pytest.mark.slow
def test_wheel_ships_prompts_and_corpus(tmp_path):
    # Built from a copy of what the package is made of: an old build/ folder in the work tree
    # would otherwise leak stale modules into the wheel and hide a subpackage missing from pyproject.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for part in ("rag", "prompts"):
        shutil.copytree(ROOT / part, src / part, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(src)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("paper_rag-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "rag/prompts/answer_system.md" in names and "rag/data/corpus.jsonl" in names
    # every module and data file of the package, subpackages (ui, eval, api) included
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / "rag").rglob("*")
               if p.suffix in (".py", ".json", ".jsonl", ".npz") and "__pycache__" not in p.parts}
    assert shipped <= set(names), sorted(shipped - set(names))
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import rag, rag.prompting, rag.corpus;"
            "assert rag.__file__.startswith(sys.argv[1]), rag.__file__;"
            "print(len(rag.prompting.read_prompt('answer_system')), len(rag.corpus.load_bundled()))")
    out = subprocess.run([sys.executable, "-c", code, str(unpacked)], check=True, capture_output=True, text=True)
    n_chars, n_papers = map(int, out.stdout.split())
    assert n_chars > 200 and n_papers == 119
