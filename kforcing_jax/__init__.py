"""kforcing_jax: K-Forcing (push-forward language modeling) in JAX/Flax. `load(workdir)` restores a model."""


def load(workdir, step=None):
  """Restores a workdir's newest checkpoint as a model with `.generate` (see `kforcing_jax.api.load`)."""
  from kforcing_jax.api import load as _load  # lazy: `import kforcing_jax` stays free of JAX/orbax start-up
  return _load(workdir, step)
