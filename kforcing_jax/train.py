r"""Train one stage: `python -m kforcing_jax.train --config experiments/configs/NAME.py[:args] --workdir DIR`.

  python -m kforcing_jax.train --config experiments/configs/tiny_cpu.py:stage=ar --workdir /tmp/kf/ar
  python -m kforcing_jax.train --config experiments/configs/tiny_cpu.py:stage=pflm,k=1 --workdir /tmp/kf/k1 \
      --config.teacher_workdir=/tmp/kf/ar --config.num_steps=100

Bad input (unknown config key, missing teacher, mismatched workdir or tokenizer, unreadable corpus) prints one
`error: ...` line and exits with status 2; a NaN / Inf loss exits with status 1 (the last good checkpoint stays).
All logic lives in `kforcing_jax.training.train.train_and_evaluate`.
"""
import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:args]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, tokenizer, metrics)")


def main(argv):
  del argv
  from kforcing_jax.training import distributed
  try:  # first, before anything touches a JAX backend; a no-op for a single process (training/distributed.py)
    distributed.initialize_from_env()
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  from kforcing_jax.training import train
  from kforcing_jax.training.checkpoint import CheckpointError
  try:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.DivergedError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except (ValueError, OSError, CheckpointError) as e:
    print(f"error: {e}".splitlines()[0], file=sys.stderr)
    sys.exit(2)
  logging.info("final metrics: %s", result)
  if distributed.is_main_process():
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in result.items()}))


def _parse_flags(argv):
  # Any flag / config-file / config-key error is one line + exit 2.
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # absl and ml_collections raise several types for bad flags / overrides / config files
    msg = (str(e).strip().splitlines() or [type(e).__name__])[-1]
    if isinstance(e, (AttributeError, KeyError)):  # ml_collections' answer to --config.<unknown key>=...
      msg = f"unknown config key {msg.strip(chr(34))} (the config is locked; see the config file for its fields)"
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)
  if _WORKDIR.value is None or _CONFIG.value is None:
    print("error: --config and --workdir are required", file=sys.stderr)
    sys.exit(2)
  return rest


def run(argv=None):
  """The entry point: parses flags (bad input: one line, exit 2) and runs `main`."""
  app.run(main, argv=list(sys.argv if argv is None else argv), flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
