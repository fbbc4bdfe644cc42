"""Attention patterns of K-Forcing as pure functions of (q, k, v) after RoPE.

Layouts: q/k/v are [batch, length, heads, head_dim]; hint tensors carry an extra window axis,
`q_BxWxKxHxD` (window t, slot i). Softmax runs in float32 whatever the compute dtype.

Training (the "staircase"): context query t sees context keys <= t and never a hint; hint (t, i) sees context
keys <= t and hints (t, j <= i) of its own window only.
  - `dense`: the whole (W + W*K)^2 boolean mask, one softmax. The test oracle (and what the reference does).
  - `split`: context stream = plain causal attention; hint stream = [hints -> context] as a causal pattern over a
    [W, K] grid of queries, plus [hints -> own window] as a K x K block, merged by log-sum-exp. Never builds the
    dense mask: (W^2/2 + W^2*K + W*K^2) scores instead of W^2 (K+1)^2.
  - `pallas`: the same split, blockwise in kernels (kforcing_jax.kernels).
Decoding: queries [new context tokens | transient hints] against a preallocated cache indexed by absolute position.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

_MASKED = -1e30


def expand_kv(x_BxTxHkvxD, num_heads: int, axis: int = 2):
  """Repeats grouped K/V heads up to the query heads (GQA/MQA); a no-op for MHA.

  Args:
    x_BxTxHkvxD: keys or values with Hkv heads on `axis`.
    num_heads: the number of query heads (a multiple of Hkv).
    axis: the heads axis.
  Returns:
    The tensor with num_heads heads (query head h reads KV head h // (num_heads // Hkv), as in HF).
  """
  rep = num_heads // x_BxTxHkvxD.shape[axis]
  return x_BxTxHkvxD if rep == 1 else jnp.repeat(x_BxTxHkvxD, rep, axis=axis)


def _scores(q, k):
  scale = 1.0 / np.sqrt(q.shape[-1])
  return jnp.einsum("bqhd,bshd->bhqs", q, k, preferred_element_type=jnp.float32) * scale


def _softmax_attend(s_BxHxQxS, mask, v):
  s = jnp.where(mask, s_BxHxQxS, _MASKED)
  p = jax.nn.softmax(s, axis=-1)
  return jnp.einsum("bhqs,bshd->bqhd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)


def _partial(s, mask, v, spec):
  """Unnormalised attention of one key block: (numerator, row max, row sum), float32."""
  s = jnp.where(mask, s, _MASKED)
  m = jnp.max(s, axis=-1, keepdims=True)
  p = jnp.exp(s - m) * mask
  return jnp.einsum(spec, p.astype(v.dtype), v, preferred_element_type=jnp.float32), m, jnp.sum(p, -1, keepdims=True)


def _merge(part1, part2):
  """Joint softmax of two key blocks from their partial results (log-sum-exp merge)."""
  (n1, m1, l1), (n2, m2, l2) = part1, part2
  m = jnp.maximum(m1, m2)
  a1, a2 = jnp.exp(m1 - m), jnp.exp(m2 - m)
  return (n1 * a1 + n2 * a2) / (l1 * a1 + l2 * a2)


def causal_attention(q_BxTxHxD, k_BxTxHxD, v_BxTxHxD):
  """Plain causal self-attention (the AR forward and the context stream of the staircase).

  Args:
    q_BxTxHxD, k_BxTxHxD, v_BxTxHxD: queries, keys, values after RoPE.
  Returns:
    Attention output [B, T, H, D] in float32.
  """
  t = q_BxTxHxD.shape[1]
  mask = jnp.tril(jnp.ones((t, t), bool))
  return _softmax_attend(_scores(q_BxTxHxD, k_BxTxHxD), mask, v_BxTxHxD)


@functools.lru_cache(maxsize=32)
def staircase_mask(num_windows: int, k: int) -> np.ndarray:
  """The dense (W + W*K)^2 training mask, True = attend. Rows/cols: [context 0..W-1 | hint (t, i) at W + t*K + i].

  Args:
    num_windows: W, the number of context tokens / windows.
    k: hints per window.
  Returns:
    A boolean numpy array of shape [W + W*K, W + W*K].
  """
  w = num_windows
  t_ctx = np.arange(w)
  t_hint = np.repeat(np.arange(w), k)
  i_hint = np.tile(np.arange(k), w)
  ctx_ctx = t_ctx[:, None] >= t_ctx[None, :]
  hint_ctx = t_hint[:, None] >= t_ctx[None, :]
  hint_hint = (t_hint[:, None] == t_hint[None, :]) & (i_hint[:, None] >= i_hint[None, :])
  top = np.concatenate([ctx_ctx, np.zeros((w, w * k), bool)], axis=1)
  bottom = np.concatenate([hint_ctx, hint_hint], axis=1)
  return np.concatenate([top, bottom], axis=0)


def staircase_dense(qc, kc, vc, qh, kh, vh):
  """Staircase attention through the dense mask (the oracle). Shapes: see `staircase_attention`."""
  b, w, h, d = qc.shape
  k = qh.shape[2]
  flat = lambda x: x.reshape(b, w * k, h, d)
  q = jnp.concatenate([qc, flat(qh)], 1)
  kk = jnp.concatenate([kc, flat(kh)], 1)
  v = jnp.concatenate([vc, flat(vh)], 1)
  o = _softmax_attend(_scores(q, kk), jnp.asarray(staircase_mask(w, k)), v)
  return o[:, :w], o[:, w:].reshape(b, w, k, h, d)


def staircase_split(qc, kc, vc, qh, kh, vh):
  """Staircase attention as causal context + ([W, K] grid -> context, K x K window) merged by log-sum-exp."""
  w, k = qh.shape[1], qh.shape[2]
  scale = 1.0 / np.sqrt(qc.shape[-1])
  oc = causal_attention(qc, kc, vc)
  # hints -> context: query (t, i) sees context keys t' <= t.
  s1 = jnp.einsum("btihd,bshd->bhtis", qh, kc, preferred_element_type=jnp.float32) * scale
  m1 = (jnp.arange(w)[:, None, None] >= jnp.arange(w)[None, None, :])
  part1 = _partial(s1, m1, vc, "bhtis,bshd->bhtid")
  # hints -> own window: (t, i) sees (t, j <= i).
  s2 = jnp.einsum("btihd,btjhd->bhtij", qh, kh, preferred_element_type=jnp.float32) * scale
  m2 = jnp.tril(jnp.ones((k, k), bool))
  oh = _merge(part1, _partial(s2, m2, vh, "bhtij,btjhd->bhtid"))
  return oc, jnp.transpose(oh, (0, 2, 3, 1, 4))


def window_attention(q_BxWxHxD, kc_BxWxHxD, vc_BxWxHxD, kh_BxWxJxHxD, vh_BxWxJxHxD):
  """One new token per window (an AR rollout along every window at once): window t's query sees the context keys
  s <= t and its own window's J tokens so far (itself included), merged by log-sum-exp like `staircase_split`.

  Returns:
    Attention output [B, W, H, D] in float32.
  """
  w = q_BxWxHxD.shape[1]
  scale = 1.0 / np.sqrt(q_BxWxHxD.shape[-1])
  s1 = jnp.einsum("bthd,bshd->bhts", q_BxWxHxD, kc_BxWxHxD, preferred_element_type=jnp.float32) * scale
  part1 = _partial(s1, jnp.arange(w)[:, None] >= jnp.arange(w)[None, :], vc_BxWxHxD, "bhts,bshd->bhtd")
  s2 = jnp.einsum("bthd,btjhd->bhtj", q_BxWxHxD, kh_BxWxJxHxD, preferred_element_type=jnp.float32) * scale
  part2 = _partial(s2, jnp.ones(s2.shape[-1:], bool), vh_BxWxJxHxD, "bhtj,btjhd->bhtd")
  return jnp.transpose(_merge(part1, part2), (0, 2, 1, 3))


def staircase_attention(qc, kc, vc, qh, kh, vh, impl: str = "split", block_q: int = 128, block_k: int = 128):
  """Staircase training attention, dispatched by implementation.

  Args:
    qc, kc, vc: context queries/keys/values [B, W, H, D].
    qh, kh, vh: hint queries/keys/values [B, W, K, H, D] (window t, slot i).
    impl: "dense" | "split" | "pallas".
    block_q, block_k: tile sizes of the pallas kernel.
  Returns:
    (context output [B, W, H, D], hint output [B, W, K, H, D]), float32.
  """
  if impl == "dense":
    return staircase_dense(qc, kc, vc, qh, kh, vh)
  if impl == "split":
    return staircase_split(qc, kc, vc, qh, kh, vh)
  if impl == "pallas":
    from kforcing_jax.kernels import staircase as staircase_kernel  # kernels stay optional at import time
    return staircase_kernel.staircase_attention(qc, kc, vc, qh, kh, vh, block_q=block_q, block_k=block_k)
  raise ValueError(f"unknown attention_impl {impl!r}; expected dense, split or pallas")


def write_cache(cache_BxHxSxD, new_BxTxHxD, start_B):
  """Writes `new` into each row of the cache at that row's own start position (ragged batches)."""
  new_BxHxTxD = jnp.transpose(new_BxTxHxD, (0, 2, 1, 3)).astype(cache_BxHxSxD.dtype)
  upd = lambda c, n, s: jax.lax.dynamic_update_slice(c, n, (0, s, 0))
  return jax.vmap(upd)(cache_BxHxSxD, new_BxHxTxD, start_B)


def decode_attention(q_BxQxHxD, qpos_BxQ, k_cache, v_cache, kv_len_B, n_ctx: int, kh=None, vh=None,
                     impl: str = "split"):
  """Attention of one decode step: [n_ctx context queries | K hint queries] against the cache (+ transient hints).

  The cache is indexed by absolute position and already holds this step's context keys. A context query at
  position p sees cache slots s <= p; a hint query sees every valid slot (s < kv_len) and the hints j <= i.
  The cache is laid out heads-major, [B, H, S, D], so both attention matmuls read it as a plain batched matmul
  over (B, H); with slots-major [B, S, H, D] XLA:CPU transposed every layer's whole cache on every step
  (decoding throughput before / after in docs/benchmarks.md).

  Args:
    q_BxQxHxD: queries, Q = n_ctx + K.
    qpos_BxQ: absolute positions of the queries.
    k_cache, v_cache: [B, H, S, D] caches.
    kv_len_B: number of valid cache slots per row (after this step's writes).
    n_ctx: number of leading context queries (static).
    kh, vh: hint keys/values [B, K, H, D], or None when K = 0 (the AR step).
    impl: "pallas" runs the decode kernel; anything else the XLA path.
  Returns:
    Attention output [B, Q, H, D] in float32.
  """
  if impl == "pallas":
    from kforcing_jax.kernels import decode as decode_kernel
    return decode_kernel.decode_attention(q_BxQxHxD, qpos_BxQ, k_cache, v_cache, kv_len_B, n_ctx, kh, vh)
  s_len = k_cache.shape[2]
  scale = 1.0 / np.sqrt(q_BxQxHxD.shape[-1])
  q_BxHxQxD = jnp.transpose(q_BxQxHxD, (0, 2, 1, 3)).astype(k_cache.dtype)
  s_c = jnp.einsum("bhqd,bhsd->bhqs", q_BxHxQxD, k_cache, preferred_element_type=jnp.float32) * scale
  slot = jnp.arange(s_len)[None, None, :]
  mask_c = ((slot <= qpos_BxQ[:, :, None]) & (slot < kv_len_B[:, None, None]))[:, None]
  if kh is None:
    # A plain softmax, not the unnormalised partial below: verify mode's token-for-token equality with the AR
    # sampler relies on the AR step and the teacher's scoring pass rounding alike (the tests fail otherwise).
    p = jax.nn.softmax(jnp.where(mask_c, s_c, _MASKED), axis=-1)
    o = jnp.einsum("bhqs,bhsd->bhqd", p.astype(v_cache.dtype), v_cache, preferred_element_type=jnp.float32)
    return jnp.transpose(o, (0, 2, 1, 3))
  # Cache and transient hints are scored separately and merged by log-sum-exp, so the cache is never
  # concatenated with (copied next to) the hints.
  nq, nh = q_BxQxHxD.shape[1], kh.shape[1]
  r = jnp.arange(nq)[:, None] - n_ctx
  mask_h = (r >= 0) & (r >= jnp.arange(nh)[None, :])
  o = _merge(_partial(s_c, mask_c, v_cache, "bhqs,bhsd->bhqd"),
             _partial(_scores(q_BxQxHxD, kh), mask_h, vh.astype(v_cache.dtype), "bhqs,bshd->bhqd"))
  return jnp.transpose(o, (0, 2, 1, 3))
