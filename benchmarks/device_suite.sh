#!/usr/bin/env bash
# One command for the accelerator tables (docs/benchmarks.md): on one H100/H200 it installs the CUDA wheels into
# a fresh venv, then runs `python -m benchmarks.device_suite` (inverse-CDF check, staircase attention fwd+bwd
# dense/split/pallas in fp32 and bf16, decoding tok/s for AR and K=1..4 at paper size and SmolLM2 shape in bf16, B=1/8/32/128).
#
#   benchmarks/device_suite.sh [OUT_DIR]                       # GPU: install, check the GPU, run (<= 8 min)
#   DEVICE_SUITE_SMOKE=1 benchmarks/device_suite.sh [OUT_DIR]  # tiny sizes with the current python, no install
#
# Env: PYTHON (interpreter for smoke mode / to create the venv; default python3), DEVICE_SUITE_VENV (default
# OUT_DIR/venv), DEVICE_SUITE_TIMEOUT (seconds for the measuring part; default 420). Exits non-zero, with an
# `error:` line, when the GPU is missing, a kernel does not compile, or a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-device_suite_out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [[ "${DEVICE_SUITE_SMOKE:-0}" == 1 ]]; then
  exec timeout "${DEVICE_SUITE_TIMEOUT:-600}" "$PY" -m benchmarks.device_suite --smoke --out "$OUT"
fi
VENV=${DEVICE_SUITE_VENV:-$OUT/venv}
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PY" -m venv "$VENV"
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
"$VENV/bin/pip" install -q -e '.[cuda]'
"$VENV/bin/python" - <<'PY'
import sys
import jax
if jax.default_backend() != "gpu":
  print(f"error: no GPU visible to jax (backend {jax.default_backend()}, devices {jax.devices()})", file=sys.stderr)
  sys.exit(1)
print("device:", jax.devices()[0].device_kind, "jax", jax.__version__)
PY
# Keep XLA from grabbing 75 % of the GPU up front, so the peak-memory columns come from XLA's analysis alone.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
timeout "${DEVICE_SUITE_TIMEOUT:-420}" "$VENV/bin/python" -m benchmarks.device_suite --out "$OUT"
