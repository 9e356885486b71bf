#!/usr/bin/env bash
# The prepared device check (benchmarks/device_check.py): on one H100/H200 it finishes within
# 8 minutes and writes device_check.json and device_check.md into --out (default
# benchmarks/results/device-check). `--tiny` runs it on a CPU in seconds (the test suite does).
#
#   bash benchmarks/device_check.sh                         # a GPU, the paper's CIFAR shapes
#   bash benchmarks/device_check.sh --out "$OUT"            # e.g. into a device machine's $OUT
#   bash benchmarks/device_check.sh --tiny --out /tmp/dc    # CPU
#
# Python: $PYTHON, else the repository's .venv, else python3 (a machine with its own torch).
# Where the package is not installed, the repository goes on PYTHONPATH and tune/ is made
# importable as selmatch_tune (what pyproject.toml's package-dir does for an installed one).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
if ! "$python" -c "import selmatch, selmatch_tune" 2>/dev/null; then
  shim="$(mktemp -d)"
  ln -s "$root/tune" "$shim/selmatch_tune"
  export PYTHONPATH="$root:$shim${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
# a hard stop 30 s past the script's own 450 s budget: the JSON holds every row measured by then
exec timeout -k 10 "${DEVICE_CHECK_TIMEOUT:-480}" "$python" "$root/benchmarks/device_check.py" "$@"
