#!/usr/bin/env bash
# llama-cpp-python (the local mode) compiles from source. Built with -march=native (its
# default) it uses every instruction the CPU advertises, and some VMs advertise AMX without
# letting a guest run it: the first prompt then dies with SIGSEGV in ggml_backend_amx_mul_mat
# (seen on this project's 2-core machines). So on x86-64 it is built with GGML_NATIVE=OFF
# (AVX2/FMA/F16C: any x86-64 CPU since about 2013) into a wheel folder of its own, because
# pip's wheel cache would hand back a native build made earlier. An installed build that
# contains AMX code is replaced; a good one is left alone.
#   usage: scripts/ensure-llama-cpp.sh PYTHON
#   LLAMA_CPP_CMAKE_ARGS overrides the build flags, LLAMA_CPP_WHEELS the wheel folder.
set -euo pipefail
PY=${1:?usage: ensure-llama-cpp.sh PYTHON}
SPEC='llama-cpp-python>=0.3.30'
WHEELS=${LLAMA_CPP_WHEELS:-$HOME/.cache/paper-rag/llama-cpp-wheels}
if [ "$(uname -m)" != "x86_64" ]; then
  exit 0  # the [local] extra builds it with the defaults
fi
ARGS=${LLAMA_CPP_CMAKE_ARGS:--DGGML_NATIVE=OFF}

lib=$("$PY" -c 'import importlib.util, pathlib; s = importlib.util.find_spec("llama_cpp"); print(pathlib.Path(s.origin).parent / "lib" / "libggml-cpu.so" if s else "")')
if [ -n "$lib" ] && [ -f "$lib" ] && ! grep -q ggml_backend_amx_mul_mat "$lib"; then
  exit 0
fi
[ -n "$lib" ] && echo "replacing the installed llama-cpp-python: it was built with AMX code ($lib)" >&2

whl=$(ls -t "$WHEELS"/llama_cpp_python-*.whl 2>/dev/null | head -1 || true)
if [ -z "$whl" ]; then
  echo "building llama-cpp-python with CMAKE_ARGS='$ARGS' (about 6-10 minutes on 2 cores)..." >&2
  mkdir -p "$WHEELS"
  CMAKE_ARGS="$ARGS" "$PY" -m pip wheel --quiet --no-cache-dir --no-deps -w "$WHEELS" "$SPEC"
  whl=$(ls -t "$WHEELS"/llama_cpp_python-*.whl | head -1)
fi
# Its dependencies come with the `-e ".[test,local]"` install that follows.
"$PY" -m pip install --quiet --force-reinstall --no-deps "$whl"
