"""Parameter creation and checking against a config (init through eval_shape; shape checks for restores)."""
import flax.linen as nn
import jax
import jax.numpy as jnp

from kforcing_jax.models.config import ModelConfig
from kforcing_jax.models.transformer import KForcingLM


def abstract_params(cfg: ModelConfig):
  """Logically boxed ShapeDtypeStructs of every parameter (the input to `sharding.shardings_for`).

  Args:
    cfg: model config.
  Returns:
    `{"params": ...}` as returned by `jax.eval_shape(model.init, ...)`.
  """
  model = KForcingLM(cfg)
  tok = jnp.zeros((1, min(8, cfg.max_len)), jnp.int32)
  return jax.eval_shape(lambda k: model.init(k, tok, method=model.init_all), jax.random.key(0))


def init_params(cfg: ModelConfig, rng: jax.Array):
  """Freshly initialised, unboxed parameters (the inner dict, without the "params" key)."""
  model = KForcingLM(cfg)
  tok = jnp.zeros((1, min(8, cfg.max_len)), jnp.int32)
  return nn.unbox(model.init(rng, tok, method=model.init_all))["params"]


def check_params(cfg: ModelConfig, params) -> None:
  """Raises ValueError naming the first parameter whose presence or shape does not match `cfg`.

  Args:
    cfg: the config the params are meant for.
    params: the inner parameter dict (as stored in checkpoints).
  """
  want = {jax.tree_util.keystr(p): x.shape for p, x in
          jax.tree_util.tree_leaves_with_path(nn.unbox(abstract_params(cfg))["params"])}
  have = {jax.tree_util.keystr(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(params)}
  for key in sorted(want):
    if key not in have:
      raise ValueError(f"parameter {key} missing for config (vocab={cfg.vocab_size}, k_max={cfg.k_max})")
    if tuple(have[key]) != tuple(want[key]):
      raise ValueError(f"parameter {key} has shape {have[key]}, config expects {want[key]} "
                       f"(vocab={cfg.vocab_size}, d_model={cfg.d_model}, heads={cfg.num_heads})")
  extra = sorted(set(have) - set(want))
  if extra:
    raise ValueError(f"parameter {extra[0]} is not part of the config's model (k_max={cfg.k_max})")
