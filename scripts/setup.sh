#!/usr/bin/env bash
# Idempotent setup for a fresh Linux machine: a .venv with the CPU torch wheel, the project (editable)
# with its dev extras, and Debian's python3-doc (the CPU track's offline corpus) when apt is available.
# GPU machines: install torch/triton for your CUDA first, then `pip install -e .[dev]` (skip this script).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# Pin the CPU build: an unpinned torch pulls a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev]"
if [ ! -d /usr/share/doc/python3.11/html/_sources ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq python3-doc >/dev/null) \
    || echo "warning: could not install python3-doc; 'python -m data.prepare pydocs' will say how" >&2
fi
.venv/bin/python -c "import torch, triton; print(f'setup ok: torch {torch.__version__}, triton {triton.__version__}')"
