"""Training: mesh and sharding rules, the train state, the train loop (run directories: `kforcing_jax.workdir`).

`train_and_evaluate(config, workdir)` (train.py) is the public entry; it is imported lazily so that
`kforcing_jax.training.sharding` stays light for the decoders.
"""

__all__ = ["train_and_evaluate", "DivergedError", "BadInputError"]


def __getattr__(name):
  if name in ("train_and_evaluate", "DivergedError"):
    from kforcing_jax.training import train
    return getattr(train, name)
  if name == "BadInputError":
    from kforcing_jax.workdir import BadInputError
    return BadInputError
  raise AttributeError(f"module 'kforcing_jax.training' has no attribute {name!r}")
