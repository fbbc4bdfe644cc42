r"""Train one stage: `python -m kforcing_jax.train --config experiments/configs/NAME.py[:args] --workdir DIR`.

  python -m kforcing_jax.train --config experiments/configs/tiny_cpu.py:stage=ar --workdir /tmp/kf/ar
  python -m kforcing_jax.train --config experiments/configs/tiny_cpu.py:stage=pflm,k=1 --workdir /tmp/kf/k1 \
      --config.teacher_workdir=/tmp/kf/ar --config.num_steps=100

Bad input (unknown config key, missing teacher, mismatched workdir or tokenizer, unreadable corpus) prints one
`error: ...` line and exits with status 2; a NaN / Inf loss exits with status 1 (the last good checkpoint stays).
Quiet by default (`--verbosity=0` for INFO logs). All logic lives in
`kforcing_jax.training.train.train_and_evaluate`.
"""
import json

from absl import flags
from ml_collections import config_flags

from kforcing_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:args]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, tokenizer, metrics)")


def main(argv):
  del argv
  from kforcing_jax.training import distributed
  distributed.initialize_from_env()  # first, before anything touches a JAX backend; a no-op for one process
  from kforcing_jax.training import train
  try:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except train.DivergedError as e:
    cli.fail(e, status=1)
  if distributed.is_main_process():
    print(json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in result.items()}))


def run(argv=None):
  """The entry point: parses flags (bad input: one line, exit 2) and runs `main`."""
  cli.run(main, argv, required=["config", "workdir"], config_flag="config")


if __name__ == "__main__":
  run()
