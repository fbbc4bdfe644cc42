"""Flash-style Pallas kernels for the K-Forcing staircase training attention, with a custom VJP.

Pattern (same as `attention.staircase_split`): context query t sees context keys <= t; hint (t, i) sees context
keys <= t and hints (t, j <= i) of its own window. We run it as two "streams" over a [B, H, rows, D] layout:
  - context stream: rows = the W context queries, keys = context; row t sees keys <= t (plain causal);
  - hint stream: rows = the W*K hints flattened as r = t*K + i, keys = context; row r sees keys <= r // K (a causal
    staircase of slope 1/K), plus ONE extra key block: the hints of the query tile itself (a tile of block_q rows
    holds block_q / K whole windows, so a hint's own window always lies in its own tile).

Tiling: grid (B, H, query tiles); each program keeps its query tile resident and loops over key tiles with an
online softmax (float32 running max / sum / accumulator). Masks are index arithmetic on iotas, never arrays:
key tiles entirely above a tile's staircase are never visited (the loop bound is the last key tile the tile's last
window sees), tiles entirely below it run without any mask (a separate, unmasked loop), and only the tiles
crossing the staircase pay for the comparison. A tile of the hint stream visits about (t / block_k + 2) key tiles
instead of the W / block_k + W*K / block_k of the dense (W + W*K)^2 mask.

Backward: Pallas backward kernels (FlashAttention-2 style), not an XLA recompute. The forward saves the per-row
log-sum-exp; a dq kernel (grid over query tiles, same loops as the forward) also emits the hint keys' / values'
gradients, since a hint key is only seen from its own tile; a dk/dv kernel (grid over context key tiles) loops
over the query tiles of both streams that see the key tile, skipping those that cannot. Why kernels rather than a
blockwise XLA recompute: a lax.scan body has static shapes, so the recompute would either score whole rectangles
like `split` (1.5x the forward's visited scores at N=1024, k=4, and the backward is two thirds of the FLOPs) or
need a per-tile lax.cond; the kernels reuse the forward's exact loop bounds and never leave the tile.
Memory stays O(B H W K D): probabilities are rebuilt tile by tile from q, k and the saved log-sum-exp.

Ragged W is padded to a multiple of both block sizes; causality alone keeps real rows away from padded keys, and
padded rows are sliced off (their cotangents are zero, so they add nothing to the key gradients).
Backends: Mosaic on TPU, Triton on GPU, interpret mode on CPU (tests only) — see `kernels.backend`. Only interpret
mode has been run; the tests export the kernels for tpu and cuda (Pallas' lowering rules accept them), but the
device compilers after that have not run on them.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import pallas as pl

from kforcing_jax.kernels import backend

MAX_K = 8           # hints per window the kernel is built for (a power of two dividing block_q)
_MASKED = -1e30     # finite, so a running max that has only seen masked scores never produces inf - inf
_DTYPES = (jnp.float32, jnp.bfloat16)


def _dot_nt(a, b):  # [M, D] x [N, D] -> [M, N]
  return lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)


def _dot_tn(a, b):  # [N, M] x [N, D] -> [M, D]
  return lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _dot(a, b):  # [M, N] x [N, D] -> [M, D]
  return lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)


def _iota(shape, axis):
  return lax.broadcasted_iota(jnp.int32, shape, axis)


def _key_tile_bounds(qi, *, k, bq, bk):
  """Key tiles [0, n_full) are fully visible to query tile qi, [n_full, n_all) cross its staircase."""
  first_win = lax.div(qi * bq, k)
  last_win = lax.div(qi * bq + bq - 1, k)
  return lax.div(first_win + 1, bk), lax.div(last_win, bk) + 1


def _own_window_mask(qi, *, k, bq):
  row = qi * bq + _iota((bq, bq), 0)
  col = qi * bq + _iota((bq, bq), 1)
  return (lax.div(row, k) == lax.div(col, k)) & (row >= col)


def _online_update(carry, s, v):
  acc, m, l = carry
  m_new = jnp.maximum(m, jnp.max(s, axis=1, keepdims=True))
  alpha = jnp.exp(m - m_new)
  # Masked scores vanish here: every row sees context key 0 in the first tile visited, so m_new is a real score.
  p = jnp.exp(s - m_new)
  return alpha * acc + _dot(p.astype(v.dtype), v), m_new, alpha * l + jnp.sum(p, axis=1, keepdims=True)


def _fwd_kernel(q_ref, kc_ref, vc_ref, *refs, k, bq, bk, scale, hints):
  if hints:
    kh_ref, vh_ref, o_ref, lse_ref = refs
  else:
    o_ref, lse_ref = refs
  qi = pl.program_id(2)
  q = q_ref[...]
  win = lax.div(qi * bq + _iota((bq, 1), 0), k)
  n_full, n_all = _key_tile_bounds(qi, k=k, bq=bq, bk=bk)

  def step(j, carry, masked):
    start = pl.multiple_of(j * bk, bk)
    s = _dot_nt(q, kc_ref[pl.ds(start, bk), :]) * scale
    if masked:
      s = jnp.where(win >= start + _iota((1, bk), 1), s, _MASKED)
    return _online_update(carry, s, vc_ref[pl.ds(start, bk), :])

  carry = (jnp.zeros(q.shape, jnp.float32), jnp.full((bq, 1), _MASKED, jnp.float32), jnp.zeros((bq, 1), jnp.float32))
  carry = lax.fori_loop(0, n_full, functools.partial(step, masked=False), carry)
  carry = lax.fori_loop(n_full, n_all, functools.partial(step, masked=True), carry)
  if hints:
    s = jnp.where(_own_window_mask(qi, k=k, bq=bq), _dot_nt(q, kh_ref[...]) * scale, _MASKED)
    carry = _online_update(carry, s, vh_ref[...])
  acc, m, l = carry
  o_ref[...] = acc / l
  lse_ref[...] = m + jnp.log(l)


def _dq_kernel(q_ref, kc_ref, vc_ref, *refs, k, bq, bk, scale, hints):
  if hints:
    kh_ref, vh_ref, do_ref, lse_ref, delta_ref, dq_ref, dkh_ref, dvh_ref = refs
  else:
    do_ref, lse_ref, delta_ref, dq_ref = refs
  qi = pl.program_id(2)
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
  win = lax.div(qi * bq + _iota((bq, 1), 0), k)
  n_full, n_all = _key_tile_bounds(qi, k=k, bq=bq, bk=bk)

  def grad_s(s, v):  # probabilities from the saved log-sum-exp, then dS = P * (dP - delta)
    p = jnp.exp(s - lse)
    return p, p * (_dot_nt(do, v) - delta)

  def step(j, dq, masked):
    start = pl.multiple_of(j * bk, bk)
    kb = kc_ref[pl.ds(start, bk), :]
    s = _dot_nt(q, kb) * scale
    if masked:
      s = jnp.where(win >= start + _iota((1, bk), 1), s, _MASKED)
    _, ds = grad_s(s, vc_ref[pl.ds(start, bk), :])
    return dq + _dot(ds.astype(kb.dtype), kb)

  dq = jnp.zeros(q.shape, jnp.float32)
  dq = lax.fori_loop(0, n_full, functools.partial(step, masked=False), dq)
  dq = lax.fori_loop(n_full, n_all, functools.partial(step, masked=True), dq)
  if hints:
    kh = kh_ref[...]
    s = jnp.where(_own_window_mask(qi, k=k, bq=bq), _dot_nt(q, kh) * scale, _MASKED)
    p, ds = grad_s(s, vh_ref[...])
    dq = dq + _dot(ds.astype(kh.dtype), kh)
    dvh_ref[...] = _dot_tn(p.astype(do.dtype), do).astype(dvh_ref.dtype)
    dkh_ref[...] = (_dot_tn(ds.astype(q.dtype), q) * scale).astype(dkh_ref.dtype)
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(kc_ref, vc_ref, *refs, slopes, bq, bk, scale):
  dk_ref, dv_ref = refs[-2:]
  j = pl.program_id(2)
  kb, vb = kc_ref[...], vc_ref[...]
  col = j * bk + _iota((1, bk), 1)
  carry = (jnp.zeros(kb.shape, jnp.float32), jnp.zeros(vb.shape, jnp.float32))
  for n, k in enumerate(slopes):
    q_ref, do_ref, lse_ref, delta_ref = refs[4 * n: 4 * n + 4]
    num_tiles = q_ref.shape[0] // bq
    # Row r sees key c iff r // k >= c: tiles before `first` see none of this key tile, tiles from `full` on see all.
    first = lax.div(j * bk * k, bq)
    full = jnp.minimum(lax.div(((j + 1) * bk - 1) * k + bq - 1, bq), num_tiles)

    def step(i, carry, masked, k=k, q_ref=q_ref, do_ref=do_ref, lse_ref=lse_ref, delta_ref=delta_ref):
      dk, dv = carry
      start = pl.multiple_of(i * bq, bq)
      q, do = q_ref[pl.ds(start, bq), :], do_ref[pl.ds(start, bq), :]
      s = _dot_nt(q, kb) * scale
      if masked:
        s = jnp.where(lax.div(start + _iota((bq, 1), 0), k) >= col, s, _MASKED)
      p = jnp.exp(s - lse_ref[pl.ds(start, bq), :])
      ds = p * (_dot_nt(do, vb) - delta_ref[pl.ds(start, bq), :])
      return dk + _dot_tn(ds.astype(q.dtype), q), dv + _dot_tn(p.astype(do.dtype), do)

    carry = lax.fori_loop(first, full, functools.partial(step, masked=True), carry)
    carry = lax.fori_loop(full, num_tiles, functools.partial(step, masked=False), carry)
  dk, dv = carry
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _tile(bq, d):
  return pl.BlockSpec((None, None, bq, d), lambda b, h, i: (b, h, i, 0))


def _whole(length, d):
  return pl.BlockSpec((None, None, length, d), lambda b, h, i: (b, h, 0, 0))


def _call_fwd(q, kc, vc, kh, vh, *, k, bq, bk, be):
  b, h, rows, d = q.shape
  hints = kh is not None
  in_specs = [_tile(bq, d), _whole(kc.shape[2], d), _whole(kc.shape[2], d)] + [_tile(bq, d)] * (2 * hints)
  kernel = functools.partial(_fwd_kernel, k=k, bq=bq, bk=bk, scale=1.0 / np.sqrt(d), hints=hints)
  return pl.pallas_call(
      kernel, grid=(b, h, rows // bq), in_specs=in_specs, out_specs=[_tile(bq, d), _tile(bq, 1)],
      out_shape=[jax.ShapeDtypeStruct((b, h, rows, d), jnp.float32), jax.ShapeDtypeStruct((b, h, rows, 1), jnp.float32)],
      name=f"staircase_fwd_k{k}", **backend.call_kwargs(be, 3))(q, kc, vc, *([kh, vh] if hints else []))


def _call_dq(q, kc, vc, kh, vh, do, lse, delta, *, k, bq, bk, be):
  b, h, rows, d = q.shape
  hints = kh is not None
  in_specs = ([_tile(bq, d), _whole(kc.shape[2], d), _whole(kc.shape[2], d)] + [_tile(bq, d)] * (2 * hints)
              + [_tile(bq, d), _tile(bq, 1), _tile(bq, 1)])
  grad = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype)
  out_shape = [grad(q)] + ([grad(kh), grad(vh)] if hints else [])
  kernel = functools.partial(_dq_kernel, k=k, bq=bq, bk=bk, scale=1.0 / np.sqrt(d), hints=hints)
  return pl.pallas_call(
      kernel, grid=(b, h, rows // bq), in_specs=in_specs, out_specs=[_tile(bq, d)] * len(out_shape),
      out_shape=out_shape, name=f"staircase_dq_k{k}",
      **backend.call_kwargs(be, 3))(q, kc, vc, *([kh, vh] if hints else []), do, lse, delta)


def _call_dkv(kc, vc, streams, *, bq, bk, be):
  b, h, w, d = kc.shape
  in_specs, args = [_tile(bk, d), _tile(bk, d)], [kc, vc]
  for q, do, lse, delta, _ in streams:
    in_specs += [_whole(q.shape[2], d), _whole(q.shape[2], d), _whole(q.shape[2], 1), _whole(q.shape[2], 1)]
    args += [q, do, lse, delta]
  kernel = functools.partial(_dkv_kernel, slopes=tuple(s[-1] for s in streams), bq=bq, bk=bk, scale=1.0 / np.sqrt(d))
  return pl.pallas_call(
      kernel, grid=(b, h, w // bk), in_specs=in_specs, out_specs=[_tile(bk, d)] * 2,
      out_shape=[jax.ShapeDtypeStruct(kc.shape, kc.dtype), jax.ShapeDtypeStruct(vc.shape, vc.dtype)],
      name="staircase_dkv", **backend.call_kwargs(be, 3))(*args)


def _to_rows(x_BxLxHxD, rows):
  x = jnp.swapaxes(x_BxLxHxD, 1, 2)
  return jnp.pad(x, ((0, 0), (0, 0), (0, rows - x.shape[2]), (0, 0)))


def _from_rows(x_BxHxRxD, rows):
  return jnp.swapaxes(x_BxHxRxD[:, :, :rows], 1, 2)


def _padded_windows(w, bq, bk):
  tile = max(bq, bk)  # both powers of two: the larger is a multiple of the smaller
  return -(-w // tile) * tile


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _staircase(bq, bk, be, qc, kc, vc, qh, kh, vh):
  return _staircase_fwd(bq, bk, be, qc, kc, vc, qh, kh, vh)[0]


def _staircase_fwd(bq, bk, be, qc, kc, vc, qh, kh, vh):
  b, w, h, d = qc.shape
  k = qh.shape[2]
  wp = _padded_windows(w, bq, bk)
  ctx = [_to_rows(x, wp) for x in (qc, kc, vc)]
  hint = [_to_rows(x.reshape(b, w * k, h, d), wp * k) for x in (qh, kh, vh)]
  oc, lsec = _call_fwd(*ctx, None, None, k=1, bq=bq, bk=bk, be=be)
  oh, lseh = _call_fwd(hint[0], ctx[1], ctx[2], hint[1], hint[2], k=k, bq=bq, bk=bk, be=be)
  out = (_from_rows(oc, w), _from_rows(oh, w * k).reshape(b, w, k, h, d))
  return out, (ctx, hint, oc, lsec, oh, lseh)


def _staircase_bwd(bq, bk, be, res, g):
  (qc, kc, vc), (qh, kh, vh), oc, lsec, oh, lseh = res
  doc_BxWxHxD, doh_BxWxKxHxD = g
  b, w, k, h, d = doh_BxWxKxHxD.shape
  doc = _to_rows(doc_BxWxHxD.astype(jnp.float32), qc.shape[2])
  doh = _to_rows(doh_BxWxKxHxD.reshape(b, w * k, h, d).astype(jnp.float32), qh.shape[2])
  # delta = rowsum(dO * O) in float32; dO then enters the matmuls in the input dtype, as in FlashAttention.
  deltac, deltah = (jnp.sum(do * o, -1, keepdims=True) for do, o in ((doc, oc), (doh, oh)))
  doc, doh = doc.astype(qc.dtype), doh.astype(qh.dtype)
  kw = dict(bq=bq, bk=bk, be=be)
  (dqc,) = _call_dq(qc, kc, vc, None, None, doc, lsec, deltac, k=1, **kw)
  dqh, dkh, dvh = _call_dq(qh, kc, vc, kh, vh, doh, lseh, deltah, k=k, **kw)
  dkc, dvc = _call_dkv(kc, vc, [(qc, doc, lsec, deltac, 1), (qh, doh, lseh, deltah, k)], **kw)
  ctx = [_from_rows(x, w) for x in (dqc, dkc, dvc)]
  hint = [_from_rows(x, w * k).reshape(b, w, k, h, d) for x in (dqh, dkh, dvh)]
  return (*ctx, *hint)


_staircase.defvjp(_staircase_fwd, _staircase_bwd)


def _check_block(name, value, least):
  if not isinstance(value, (int, np.integer)) or value < least or value & (value - 1):
    raise ValueError(f"{name}={value!r} must be a power of two >= {least} on this backend "
                     f"(TPU sublane tiling, Triton tile shapes)")


def _validate(qc, kc, vc, qh, kh, vh, block_q, block_k, be):
  least = backend.row_multiple(be)
  _check_block("block_q", block_q, least)
  _check_block("block_k", block_k, least)
  if qc.ndim != 4 or not qc.shape == kc.shape == vc.shape:
    raise ValueError(f"context q/k/v must share one [B, W, H, D] shape, got {qc.shape}, {kc.shape}, {vc.shape}")
  b, w, h, d = qc.shape
  if qh.ndim != 5 or not qh.shape == kh.shape == vh.shape or qh.shape[:2] != (b, w) or qh.shape[3:] != (h, d):
    raise ValueError(f"hint q/k/v must share one [B, W, K, H, D] shape matching context {qc.shape}, "
                     f"got {qh.shape}, {kh.shape}, {vh.shape}")
  k = qh.shape[2]
  if k < 1 or k > MAX_K or k & (k - 1) or block_q % k:
    raise ValueError(f"K={k} unsupported: the kernel needs a power of two <= {MAX_K} that divides block_q={block_q}")
  if d % 8 or (be == "gpu" and d & (d - 1)):
    raise ValueError(f"head_dim={d} must be a multiple of 8 (a power of two on GPU)")
  dtypes = {x.dtype for x in (qc, kc, vc, qh, kh, vh)}
  if len(dtypes) != 1 or dtypes.pop() not in _DTYPES:
    raise ValueError(f"q/k/v must all be float32 or all bfloat16, got {[str(x.dtype) for x in (qc, kc, vc, qh, kh, vh)]}")


def staircase_attention(qc, kc, vc, qh, kh, vh, block_q: int = 128, block_k: int = 128):
  """Staircase training attention (context causal; hints see context <= t and their window's hints <= i).

  Differentiable w.r.t. all six inputs through Pallas backward kernels (see the module docstring). Under an active
  mesh the kernels run per (batch, heads) shard (`backend.per_batch_and_head_shard`).

  Args:
    qc, kc, vc: context queries/keys/values after RoPE, [B, W, H, D], float32 or bfloat16.
    qh, kh, vh: hint queries/keys/values after RoPE, [B, W, K, H, D] (window t, slot i), same dtype.
    block_q: query tile (rows of the flattened context / hint streams); power of two >= 8 (16 on GPU), a
      multiple of K.
    block_k: context-key tile; power of two >= 8 (16 on GPU).
  Returns:
    (context output [B, W, H, D], hint output [B, W, K, H, D]), float32.
  Raises:
    ValueError: bad block sizes, unsupported K / dtype / backend, mismatched shapes (at trace time).
  """
  be = backend.current()
  _validate(qc, kc, vc, qh, kh, vh, block_q, block_k, be)
  fn = functools.partial(_staircase, int(block_q), int(block_k), be)
  return backend.per_batch_and_head_shard(fn, (4, 4, 4, 5, 5, 5), (4, 5))(qc, kc, vc, qh, kh, vh)
