r"""The demo's scale (4 x 256 AR teacher on the King James Bible, BPE 4096, and its k = 1 -> 2 -> 4 students).

  python -m kforcing_jax.train --config experiments/configs/tiny_cpu.py:stage=ar --workdir /tmp/kf/ar
  python -m kforcing_jax.train --config experiments/configs/tiny_cpu.py:stage=pflm,k=1 --workdir /tmp/kf/k1 \
      --config.teacher_workdir=/tmp/kf/ar

The recipe values live in `kforcing_jax/demo_config.py` (shipped in the package, so `python -m kforcing_jax.demo`
runs from an installed wheel); its docstring lists the args, the launch commands and the expected wall-clock.
"""
from kforcing_jax.demo_config import get_config  # noqa: F401  (the trainer CLI calls get_config(arg))
