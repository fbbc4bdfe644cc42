"""Pallas kernel for one cached decode step: [n_ctx context queries | K hint queries] against a ragged KV cache.

Same semantics as the XLA path of `attention.decode_attention`: a context query at absolute position p sees cache
slots s <= p with s < kv_len[b]; a hint query sees every slot s < kv_len[b] and the transient hints j <= i.

One program per batch row (grid (B,)): the row's few queries (2K for a push-forward step, 1 for an AR step) stay
resident, and for each head a loop walks the cache in tiles of `block_k` slots with an online softmax, stopping at
the row's own kv_len — the point of the kernel: the XLA path scores every slot of the preallocated cache, here a
row with 100 valid slots in a 4096-slot cache reads 1 tile instead of 32. Tiles every query sees in full run
unmasked; only the tile holding a boundary compares indices. The K hint keys are one more (masked) tile.
The queries and hints are padded to a tile height the backend accepts (8 rows, 16 on GPU); padded rows are
discarded, padded hint keys masked.

Backends as in `kernels.backend` (only interpret mode has been run). The cache is read in its model layout
[B, H, S, D], so each (head, tile) load is one contiguous [block_k, D] slab and no transpose is needed. The row's
cache is one BlockSpec block: on GPU that is a pointer and only the visited tiles are read; on TPU the pipeline
copies the whole row into VMEM, so there the skip saves compute but not HBM reads (a manual-DMA version with
memory_space=pl.ANY would fix that) and S * H * D per row must fit VMEM.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kforcing_jax.kernels import backend

BLOCK_K = 128       # cache tile; the largest power of two <= this dividing the cache length is used
_MASKED = -1e30


def _dot_nt(a, b):
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _update(carry, s, mask, v):
  acc, m, l = carry
  s = jnp.where(mask, s, _MASKED)
  m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
  alpha = jnp.exp(m - m_new)
  # A row may see nothing in a tile (e.g. hints before any valid slot), so zero masked probabilities explicitly.
  p = jnp.where(mask, jnp.exp(s - m_new), 0.0)
  acc = alpha * acc + lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())),
                                      preferred_element_type=jnp.float32)
  return acc, m_new, alpha * l + jnp.sum(p, axis=1, keepdims=True)


def _decode_kernel(kv_len_ref, q_ref, qpos_ref, kc_ref, vc_ref, *refs, n_ctx, n_hints, bk, scale):
  if n_hints:
    kh_ref, vh_ref, o_ref = refs
  else:
    (o_ref,) = refs
  kv_len = kv_len_ref[pl.program_id(0)]
  qp, num_heads = q_ref.shape[0], q_ref.shape[1]
  row = lax.broadcasted_iota(jnp.int32, (qp, 1), 0)
  # Slots each query row may see: [0, limit). Padded rows (>= n_ctx + n_hints) behave like hints and are dropped.
  limit = jnp.where(row < n_ctx, jnp.minimum(qpos_ref[...] + 1, kv_len), kv_len)
  n_full = lax.div(jnp.min(limit), bk)
  n_all = lax.div(kv_len + bk - 1, bk)

  for h in range(num_heads):
    q = q_ref[:, h, :]

    def step(j, carry, masked, h=h, q=q):
      start = pl.multiple_of(j * bk, bk)
      s = _dot_nt(q, kc_ref[h, pl.ds(start, bk), :]) * scale
      mask = (start + lax.broadcasted_iota(jnp.int32, (1, bk), 1) < limit) if masked else jnp.ones(s.shape, bool)
      return _update(carry, s, mask, vc_ref[h, pl.ds(start, bk), :])

    carry = (jnp.zeros(q.shape, jnp.float32), jnp.full((qp, 1), _MASKED, jnp.float32), jnp.zeros((qp, 1), jnp.float32))
    carry = lax.fori_loop(0, n_full, functools.partial(step, masked=False), carry)
    carry = lax.fori_loop(n_full, n_all, functools.partial(step, masked=True), carry)
    if n_hints:
      kh = kh_ref[:, h, :]
      slot = lax.broadcasted_iota(jnp.int32, (1, kh.shape[0]), 1)
      mask = (row - n_ctx >= slot) & (slot < n_hints)
      carry = _update(carry, _dot_nt(q, kh) * scale, mask, vh_ref[:, h, :])
    acc, _, l = carry
    o_ref[:, h, :] = acc / jnp.maximum(l, 1e-30)


def _cache_block(s_len, least):
  bk = BLOCK_K
  while bk >= least:
    if s_len % bk == 0:
      return bk
    bk //= 2
  raise ValueError(f"cache length {s_len} must be a multiple of {least} for the pallas decode kernel (cache tiles)")


def _validate(q, qpos, k_cache, v_cache, kv_len, n_ctx, kh, vh, be):
  if q.ndim != 4 or k_cache.ndim != 4 or k_cache.shape != v_cache.shape:
    raise ValueError(f"expected q [B, Q, H, D] and equal caches [B, H, S, D], got {q.shape}, {k_cache.shape}, "
                     f"{v_cache.shape}")
  b, nq, h, d = q.shape
  if k_cache.shape[0] != b or (k_cache.shape[1], k_cache.shape[3]) != (h, d):
    raise ValueError(f"cache {k_cache.shape} does not match queries {q.shape}")
  if qpos.shape != (b, nq) or kv_len.shape != (b,):
    raise ValueError(f"qpos must be [B, Q] = {(b, nq)} and kv_len [B] = {(b,)}, got {qpos.shape}, {kv_len.shape}")
  if (kh is None) != (vh is None):
    raise ValueError("kh and vh must both be given or both be None")
  n_hints = 0 if kh is None else kh.shape[1]
  if kh is not None and (kh.shape != vh.shape or kh.shape != (b, n_hints, h, d)):
    raise ValueError(f"hint keys/values must be [B, K, H, D] = {(b, '*', h, d)}, got {kh.shape}, {vh.shape}")
  if n_ctx < 0 or nq != n_ctx + n_hints:
    raise ValueError(f"Q={nq} queries must be n_ctx={n_ctx} context queries + {n_hints} hints")
  if d % 8 or (be == "gpu" and d & (d - 1)):
    raise ValueError(f"head_dim={d} must be a multiple of 8 (a power of two on GPU)")
  return _cache_block(k_cache.shape[2], backend.row_multiple(be)), n_hints


def decode_attention(q_BxQxHxD, qpos_BxQ, k_cache, v_cache, kv_len_B, n_ctx: int, kh=None, vh=None):
  """One decode step's attention through the Pallas kernel (drop-in for `attention.decode_attention`).

  Under an active mesh the kernel runs per (batch, heads) shard (`backend.per_batch_and_head_shard`).

  Args:
    q_BxQxHxD: queries [context tokens | hints], Q = n_ctx + K.
    qpos_BxQ: absolute positions of the queries (context rows use them for causality).
    k_cache, v_cache: [B, H, S, D] caches already holding this step's context keys; S a multiple of 8 (16 on GPU).
    kv_len_B: valid slots per row (>= 1), after this step's writes.
    n_ctx: number of leading context queries (static).
    kh, vh: hint keys/values [B, K, H, D], or None for the AR step.
  Returns:
    Attention output [B, Q, H, D] in float32.
  Raises:
    ValueError: mismatched shapes, a cache length that is not a multiple of 8, an unsupported backend.
  """
  be = backend.current()
  bk, n_hints = _validate(q_BxQxHxD, qpos_BxQ, k_cache, v_cache, kv_len_B, n_ctx, kh, vh, be)
  kernel = functools.partial(_decode_call, n_ctx=n_ctx, n_hints=n_hints, bk=bk, be=be)
  ranks = (4, 2, (4, 1), (4, 1), 1) + ((4, 4) if n_hints else (0, 0))
  return backend.per_batch_and_head_shard(kernel, ranks, 4)(q_BxQxHxD, qpos_BxQ, k_cache, v_cache, kv_len_B, kh, vh)


def _decode_call(q_BxQxHxD, qpos_BxQ, k_cache, v_cache, kv_len_B, kh, vh, *, n_ctx, n_hints, bk, be):
  b, nq, h, d = q_BxQxHxD.shape
  mult = backend.row_multiple(be)
  qp = -(-nq // mult) * mult
  pad_rows = lambda x, n: jnp.pad(x, ((0, 0), (0, n - x.shape[1])) + ((0, 0),) * (x.ndim - 2))
  q = pad_rows(q_BxQxHxD.astype(k_cache.dtype), qp)
  qpos = pad_rows(qpos_BxQ.astype(jnp.int32), qp)[:, :, None]
  args = [kv_len_B.astype(jnp.int32), q, qpos, k_cache, v_cache]
  row_spec = lambda *shape: pl.BlockSpec((None,) + shape, lambda i: (i,) + (0,) * len(shape))
  len_spec = (pl.BlockSpec(memory_space=pltpu.SMEM) if be == "tpu"
              else pl.BlockSpec((b,), lambda i: (0,)))
  in_specs = [len_spec, row_spec(qp, h, d), row_spec(qp, 1), row_spec(h, k_cache.shape[2], d),
              row_spec(h, k_cache.shape[2], d)]
  if n_hints:
    kp = -(-n_hints // mult) * mult
    args += [pad_rows(x.astype(v_cache.dtype), kp) for x in (kh, vh)]
    in_specs += [row_spec(kp, h, d)] * 2
  kernel = functools.partial(_decode_kernel, n_ctx=n_ctx, n_hints=n_hints, bk=bk, scale=1.0 / np.sqrt(d))
  out = pl.pallas_call(
      kernel, grid=(b,), in_specs=in_specs, out_specs=row_spec(qp, h, d),
      out_shape=jax.ShapeDtypeStruct((b, qp, h, d), jnp.float32), name="decode_attention",
      **backend.call_kwargs(be, 1))(*args)
  return out[:, :nq]
