#!/bin/bash
# Runs on every TPU worker (big_vision style): builds the venv once, then `python -m kforcing_jax.train "$@"`.
#   bash launch/run_tpu.sh --setup_only                       # what `launch/tpu.py setup` runs; idempotent
#   KFJ_DISTRIBUTED=auto bash launch/run_tpu.sh --config experiments/configs/X.py:args --workdir gs://B/run
# The venv is rebuilt only when setup.py or KFJ_EXTRAS change (a stamp file records both).
# JAX >= 0.10 needs Python >= 3.11; the TPU VM images ship 3.10, so python3.11 comes from apt when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${KFJ_VENV:-$HOME/kfj_venv}"
EXTRAS="${KFJ_EXTRAS:-tpu}"
PYTHON="${KFJ_PYTHON:-python3.11}"
STAMP="$VENV/.kfj_setup_$(sha1sum setup.py | cut -c1-12)_${EXTRAS//,/+}"

if [[ ! -f "$STAMP" ]]; then
  if ! command -v "$PYTHON" >/dev/null; then
    sudo apt-get update -qq && sudo apt-get install -y -qq python3.11 python3.11-venv
  fi
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip
  # gcsfs: etils.epath (used by orbax and the tokenizer files) reaches gs:// through it when TensorFlow is absent.
  "$VENV/bin/pip" install -q -e ".[${EXTRAS}]" gcsfs
  rm -f "$VENV"/.kfj_setup_* && touch "$STAMP"
  echo "venv ready: $VENV ($("$VENV/bin/python" -c 'import jax; print("jax", jax.__version__)'))"
fi

if [[ "${1:-}" == "--setup_only" ]]; then
  exit 0
fi
exec "$VENV/bin/python" -m kforcing_jax.train "$@"
