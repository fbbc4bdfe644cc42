"""Backbone layers, matching the reference DDiT block (docs/method.md §2) with logical axis names on every tensor."""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kforcing_jax.models.config import ModelConfig

constrain = nn.with_logical_constraint
kernel_init = nn.initializers.normal(stddev=0.02)


def part(init, axes):
  return nn.with_logical_partitioning(init, axes)


def rope(x_BxTxHxD, pos_BxT, base: float = 10000.0):
  """NeoX rotate-half rotary embedding over the full head dimension, computed in float32.

  Args:
    x_BxTxHxD: queries or keys.
    pos_BxT: integer absolute positions.
    base: RoPE base.
  Returns:
    The rotated tensor, float32.
  """
  d = x_BxTxHxD.shape[-1]
  inv_freq = 1.0 / (base ** (np.arange(0, d, 2, dtype=np.float32) / d))
  ang_BxTxF = pos_BxT.astype(jnp.float32)[..., None] * inv_freq
  cos = jnp.cos(jnp.concatenate([ang_BxTxF, ang_BxTxF], -1))[:, :, None, :]
  sin = jnp.sin(jnp.concatenate([ang_BxTxF, ang_BxTxF], -1))[:, :, None, :]
  x = x_BxTxHxD.astype(jnp.float32)
  x1, x2 = x[..., : d // 2], x[..., d // 2:]
  return x * cos + jnp.concatenate([-x2, x1], -1) * sin


class LayerNorm(nn.Module):
  """Bias-free LayerNorm computed in float32 (eps 1e-5), as the reference's custom LayerNorm."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", part(nn.initializers.ones, ("embed",)), (x.shape[-1],), self.cfg.param_dtype)
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, -1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + 1e-5)
    return (y * scale.astype(jnp.float32)).astype(self.cfg.dtype)


class Block(nn.Module):
  """Pre-LN transformer block; the attention pattern is a function handed in by the caller.

  `attend(q, k, v, layer_state) -> (out, new_layer_state)` receives post-RoPE [B, T, H, D] tensors for the whole
  query sequence ([context | hints] flattened) so one block serves the AR forward, the staircase and decoding.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD, pos_BxT, attend: Callable, layer_state, deterministic: bool):
    cfg = self.cfg
    h, dh = cfg.num_heads, cfg.head_dim
    dense = lambda feats, axes, kaxes, name: nn.Dense(
        feats, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
        kernel_init=part(kernel_init, kaxes), bias_init=part(nn.initializers.zeros, axes))
    w_qkv = self.param("attn_qkv", part(kernel_init, ("embed", None, "heads", "head_dim")),
                       (cfg.d_model, 3, h, dh), cfg.param_dtype)
    w_out = self.param("attn_out", part(kernel_init, ("heads", "head_dim", "embed")),
                       (h, dh, cfg.d_model), cfg.param_dtype)

    y = LayerNorm(cfg, name="norm1")(x_BxTxD)
    qkv = jnp.einsum("btd,dchk->btchk", y, w_qkv.astype(cfg.dtype))
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    q = constrain(rope(q, pos_BxT, cfg.rope_base).astype(cfg.dtype), ("batch", "length", "heads", "head_dim"))
    k = constrain(rope(k, pos_BxT, cfg.rope_base).astype(cfg.dtype), ("batch", "length", "heads", "head_dim"))
    v = constrain(v, ("batch", "length", "heads", "head_dim"))
    o, layer_state = attend(q, k, v, layer_state)
    o = jnp.einsum("bthk,hkd->btd", o.astype(cfg.dtype), w_out.astype(cfg.dtype))
    x = x_BxTxD + nn.Dropout(cfg.dropout_rate)(o, deterministic=deterministic)
    x = constrain(x, ("batch", "length", "embed"))

    y = LayerNorm(cfg, name="norm2")(x)
    y = dense(cfg.mlp_dim, ("mlp",), ("embed", "mlp"), "mlp_in")(y)
    y = constrain(nn.gelu(y, approximate=True), ("batch", "length", "mlp"))
    y = dense(cfg.d_model, ("embed",), ("mlp", "embed"), "mlp_out")(y)
    x = x + nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)
    return constrain(x, ("batch", "length", "embed")), layer_state


def sinusoid_features(x, dim: int, theta: float = 10000.0):
  """[cos | sin](2*pi*x*omega_j), omega_j = theta^(-j/(dim/2)): the reference's pointwise noise features.

  Args:
    x: values in [0, 1] of any shape.
    dim: feature size (even).
    theta: frequency base.
  Returns:
    Features of shape x.shape + (dim,), float32.
  """
  half = dim // 2
  freqs = theta ** (-np.arange(half, dtype=np.float32) / half)
  args = x.astype(jnp.float32)[..., None] * (freqs * 2.0 * np.pi)
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], -1)


def ramp_features(x, dim: int):
  """A thermometer code of u: sigmoid(dim * (x - c_j)) at `dim` evenly spaced thresholds c_j in (0, 1).

  A threshold of u (which token's inverse-CDF interval holds it) is then one linear read-out instead of the sharp
  nonlinearity the smooth (<= 1 cycle) sinusoid features need.

  Args:
    x: values in [0, 1] of any shape.
    dim: number of thresholds.
  Returns:
    Features of shape x.shape + (dim,), float32.
  """
  c = (np.arange(dim, dtype=np.float32) + 0.5) / dim
  return jax.nn.sigmoid(dim * (x.astype(jnp.float32)[..., None] - c))


class NoiseEncoder(nn.Module):
  """The reference's PointwiseNoiseEncoder: features of (u, tau) -> Linear -> + MLP(LayerNorm with bias, exact GELU).

  Takes the K slot noises of each window and returns the hint embeddings: K of them, or 2K for the "interleaved"
  layout (`ModelConfig.hint_noise`); in the "previous" layout the noise features are shifted by one slot.
  """
  cfg: ModelConfig

  @nn.compact
  def __call__(self, noise_BxWxK, tau_B):
    cfg = self.cfg
    d = cfg.d_model
    dense = lambda feats, kaxes, name: nn.Dense(
        feats, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
        kernel_init=part(kernel_init, kaxes), bias_init=part(nn.initializers.zeros, kaxes[1:]))
    fu = (ramp_features if cfg.noise_features == "ramp" else sinusoid_features)(noise_BxWxK, d)
    if cfg.hint_noise != "current":
      start = self.param("start", part(nn.initializers.normal(stddev=0.5), ("noise_feat",)), (d,), cfg.param_dtype)
      start = start.astype(jnp.float32)
    if cfg.hint_noise == "previous":
      # Hint i sees u_{i-1}; hint 1 has no earlier noise and gets the learned feature vector in its place.
      fu = jnp.concatenate([jnp.broadcast_to(start, fu[..., :1, :].shape), fu[..., :-1, :]], -2)
    elif cfg.hint_noise == "interleaved":
      # D_1 S_1 ... D_K S_K: distribution hints carry the start feature, decision hint S_i carries u_i.
      fu = jnp.stack([jnp.broadcast_to(start, fu.shape), fu], -2).reshape(fu.shape[:-2] + (-1, d))
    ft = jnp.broadcast_to(sinusoid_features(tau_B, d)[:, None, None, :], fu.shape)
    h0 = dense(d, ("noise_feat", "embed"), "combined_proj")(jnp.concatenate([fu, ft], -1).astype(cfg.dtype))
    y = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=cfg.param_dtype, name="norm",
                     scale_init=part(nn.initializers.ones, ("embed",)),
                     bias_init=part(nn.initializers.zeros, ("embed",)))(h0)
    y = nn.gelu(dense(4 * d, ("embed", "mlp"), "mlp_in")(y.astype(cfg.dtype)), approximate=False)
    return h0 + dense(d, ("mlp", "embed"), "mlp_out")(y)
