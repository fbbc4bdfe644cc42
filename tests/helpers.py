"""Tiny configs and random (non-trivial) parameters shared by the tests."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from kforcing_jax.models import KForcingLM, ModelConfig


def tiny_config(**kw) -> ModelConfig:
  base = dict(vocab_size=61, num_layers=2, d_model=32, num_heads=4, mlp_dim=64, max_len=48, k_max=4)
  base.update(kw)
  return ModelConfig(**base)


def random_params(cfg: ModelConfig, seed: int = 0, scale: float = 0.3):
  """Initialised params with every leaf perturbed, so that the zero-initialised head gives non-trivial logits."""
  model = KForcingLM(cfg)
  tok = jnp.zeros((1, 8), jnp.int32)
  params = nn.unbox(model.init(jax.random.key(seed), tok, method=model.init_all))
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  leaves = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  return model, jax.tree.unflatten(tree, leaves)


def run_convert(capsys, *args):
  """Runs the convert entry point in-process: (exit code or None, stderr)."""
  from kforcing_jax import convert  # pylint: disable=g-import-not-at-top  (defines the absl flags once per process)
  convert.FLAGS.unparse_flags()
  convert.FLAGS(["convert", *args])
  try:
    convert.main(["convert"])
  except SystemExit as e:
    return e.code, capsys.readouterr().err
  return None, capsys.readouterr().err
