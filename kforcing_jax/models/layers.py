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


def rope(x_BxTxHxD, pos_BxT, base: float = 10000.0, layout: str = "half"):
  """Rotary embedding over the full head dimension, computed in float32.

  Args:
    x_BxTxHxD: queries or keys.
    pos_BxT: integer absolute positions.
    base: RoPE base.
    layout: "half" rotates pairs (i, i + D/2) (NeoX / HF / the reference); "interleaved" pairs (2i, 2i + 1)
      (GPT-J, llama.cpp's on-disk Q/K order).
  Returns:
    The rotated tensor, float32.
  """
  d = x_BxTxHxD.shape[-1]
  inv_freq = 1.0 / (base ** (np.arange(0, d, 2, dtype=np.float32) / d))
  ang_BxTxF = pos_BxT.astype(jnp.float32)[..., None] * inv_freq
  x = x_BxTxHxD.astype(jnp.float32)
  if layout == "interleaved":
    cos, sin = jnp.cos(ang_BxTxF)[:, :, None, :], jnp.sin(ang_BxTxF)[:, :, None, :]
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return jnp.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).reshape(x.shape)
  cos = jnp.cos(jnp.concatenate([ang_BxTxF, ang_BxTxF], -1))[:, :, None, :]
  sin = jnp.sin(jnp.concatenate([ang_BxTxF, ang_BxTxF], -1))[:, :, None, :]
  x1, x2 = x[..., : d // 2], x[..., d // 2:]
  return x * cos + jnp.concatenate([-x2, x1], -1) * sin


class LayerNorm(nn.Module):
  """The configured norm over the last axis, computed in float32: `cfg.norm` (bias-free LayerNorm = the
  reference's, LayerNorm with bias, RMSNorm) with `cfg.norm_eps`. Params: scale (+ bias for "layernorm")."""
  cfg: ModelConfig
  axis_name: str = "embed"

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    dim = (x.shape[-1],)
    scale = self.param("scale", part(nn.initializers.ones, (self.axis_name,)), dim, cfg.param_dtype)
    x32 = x.astype(jnp.float32)
    if cfg.norm == "rmsnorm":
      y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + cfg.norm_eps)
    else:
      mean = jnp.mean(x32, -1, keepdims=True)
      var = jnp.mean(jnp.square(x32 - mean), -1, keepdims=True)
      y = (x32 - mean) * jax.lax.rsqrt(var + cfg.norm_eps)
    y = y * scale.astype(jnp.float32)
    if cfg.norm == "layernorm":
      y = y + self.param("bias", part(nn.initializers.zeros, (self.axis_name,)), dim, cfg.param_dtype)
    return y.astype(cfg.dtype)


_QKV_AXES = ("batch", "length", "heads", "head_dim")


class Block(nn.Module):
  """Pre-norm transformer block; the attention pattern is a function handed in by the caller.

  `attend(q, k, v, layer_state) -> (out, new_layer_state)` receives post-RoPE [B, T, H, D] queries and
  [B, T, Hkv, D] keys/values (Hkv = cfg.kv_heads; `attention.expand_kv` repeats them for GQA/MQA) for the whole
  query sequence ([context | hints] flattened) so one block serves the AR forward, the staircase and decoding.
  """
  cfg: ModelConfig

  @nn.nowrap
  def _qkv(self, y):
    cfg = self.cfg
    h, hkv, dh = cfg.num_heads, cfg.kv_heads, cfg.head_dim
    kv_axis = "heads" if hkv == h else "kv_heads"  # few KV heads stay replicated unless a rule shards them
    bias = lambda name, shape, axes: self.param(name, part(nn.initializers.zeros, axes), shape, cfg.param_dtype)
    if cfg.fused_qkv:
      w = self.param("attn_qkv", part(kernel_init, ("embed", None, "heads", "head_dim")), (cfg.d_model, 3, h, dh),
                     cfg.param_dtype)
      qkv = jnp.einsum("btd,dchk->btchk", y, w.astype(cfg.dtype))
      if cfg.qkv_bias:
        qkv = qkv + bias("attn_qkv_bias", (3, h, dh), (None, "heads", "head_dim")).astype(cfg.dtype)
      return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    wq = self.param("attn_q", part(kernel_init, ("embed", "heads", "head_dim")), (cfg.d_model, h, dh), cfg.param_dtype)
    wkv = self.param("attn_kv", part(kernel_init, ("embed", None, kv_axis, "head_dim")), (cfg.d_model, 2, hkv, dh),
                     cfg.param_dtype)
    q = jnp.einsum("btd,dhk->bthk", y, wq.astype(cfg.dtype))
    kv = jnp.einsum("btd,dchk->btchk", y, wkv.astype(cfg.dtype))
    if cfg.qkv_bias:
      q = q + bias("attn_q_bias", (h, dh), ("heads", "head_dim")).astype(cfg.dtype)
      kv = kv + bias("attn_kv_bias", (2, hkv, dh), (None, kv_axis, "head_dim")).astype(cfg.dtype)
    return q, kv[:, :, 0], kv[:, :, 1]

  @nn.nowrap
  def _mlp(self, y):
    cfg = self.cfg
    dense = lambda feats, axes, kaxes, name: nn.Dense(
        feats, use_bias=cfg.mlp_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name,
        kernel_init=part(kernel_init, kaxes), bias_init=part(nn.initializers.zeros, axes))
    up = dense(cfg.mlp_dim, ("mlp",), ("embed", "mlp"), "mlp_in")(y)
    if cfg.mlp == "swiglu":
      act = nn.silu(dense(cfg.mlp_dim, ("mlp",), ("embed", "mlp"), "mlp_gate")(y)) * up
    else:
      act = nn.gelu(up, approximate=cfg.mlp == "gelu_tanh")
    act = constrain(act, ("batch", "length", "mlp"))
    return dense(cfg.d_model, ("embed",), ("mlp", "embed"), "mlp_out")(act)

  @nn.compact
  def __call__(self, x_BxTxD, pos_BxT, attend: Callable, layer_state, deterministic: bool):
    cfg = self.cfg
    w_out = self.param("attn_out", part(kernel_init, ("heads", "head_dim", "embed")),
                       (cfg.num_heads, cfg.head_dim, cfg.d_model), cfg.param_dtype)

    q, k, v = self._qkv(LayerNorm(cfg, name="norm1")(x_BxTxD))
    if cfg.qk_norm:
      q = LayerNorm(cfg, "head_dim", name="q_norm")(q)
      k = LayerNorm(cfg, "head_dim", name="k_norm")(k)
    if cfg.position == "rope":
      q = rope(q, pos_BxT, cfg.rope_base, cfg.rope_layout).astype(cfg.dtype)
      k = rope(k, pos_BxT, cfg.rope_base, cfg.rope_layout).astype(cfg.dtype)
    kv_axes = _QKV_AXES if cfg.fused_qkv else ("batch", "length", "kv_heads", "head_dim")
    q, k, v = constrain(q, _QKV_AXES), constrain(k, kv_axes), constrain(v, kv_axes)
    o, layer_state = attend(q, k, v, layer_state)
    o = jnp.einsum("bthk,hkd->btd", o.astype(cfg.dtype), w_out.astype(cfg.dtype))
    if cfg.attn_out_bias:
      o = o + self.param("attn_out_bias", part(nn.initializers.zeros, ("embed",)), (cfg.d_model,),
                         cfg.param_dtype).astype(cfg.dtype)
    x = x_BxTxD + nn.Dropout(cfg.dropout_rate)(o, deterministic=deterministic)
    x = constrain(x, ("batch", "length", "embed"))

    y = self._mlp(LayerNorm(cfg, name="norm2")(x))
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
