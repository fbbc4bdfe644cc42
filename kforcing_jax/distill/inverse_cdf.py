"""The one inverse-CDF convention of the project: vocabulary sorted by probability, descending.

Token r owns the interval [cdf[r-1], cdf[r]) of u in [0, 1), where cdf is the running sum of the sorted
probabilities, so u -> 0 gives the argmax. Every path that maps noise to tokens (teacher targets, AR sampling,
lossless verification) or tokens to noise (noise inversion) goes through `sample` / `invert`, so a token inverted to
u is sampled back from u exactly (the two sides share the same float32 interval edges; a token is resolvable when
its interval is wider than float32's spacing near 1, about 6e-8, i.e. every token with p >= 1e-6 with a wide margin).

The convention is defined by `sorted_cdf` (a stable argsort of the whole vocabulary, then `jnp.cumsum`); `sample`
and `invert` return exactly its tokens and edges without that sort:
- The cdf depends only on the sorted probability VALUES (tied tokens have equal values), and a prefix of it only on
  the first values: `jnp.cumsum` over the top-k values equals the first k entries of the cumsum over all V (checked
  against `sorted_cdf` in tests/test_inverse_cdf.py). So the top `FAST_K` values (`lax.top_k`, O(V)) give the
  exact edges whenever u falls below their total mass, the common case for a trained LM.
- Rows whose u lies further out sort the values alone, through monotone int32 keys (XLA:CPU sorts one int32 operand
  several times faster than an argsort with the float comparator). On CPU only those rows are sorted, one by one
  in a loop; elsewhere (accelerator sorts are cheap) every row is sorted when any row needs it.
- The token at rank r is recovered from its value v: the ranks of the tokens with value v are
  [#{p > v}, #{p >= v}), in vocabulary order, as in the stable argsort.
"""
import jax
import jax.numpy as jnp

# Values taken from lax.top_k before falling back to a sort (the fallback is exact; this only trades cost).
FAST_K = 64


def _log_probs(logits_xV, temperature):
  return jax.nn.log_softmax(logits_xV.astype(jnp.float32) / temperature, axis=-1)


def sorted_cdf(logits_xV, temperature=1.0):
  """Sort order and CDF of softmax(logits / temperature), probabilities descending (the reference convention).

  Args:
    logits_xV: logits [..., V].
    temperature: scalar or array broadcastable to logits[..., :1].
  Returns:
    (order [..., V] int32 token ids by descending probability, cdf [..., V] float32 running sum).
  """
  lp = _log_probs(logits_xV, temperature)
  order = jnp.argsort(-lp, axis=-1, stable=True).astype(jnp.int32)
  p_sorted = jnp.exp(jnp.take_along_axis(lp, order, -1))
  return order, jnp.cumsum(p_sorted, axis=-1)


def sample_full_sort(logits_xV, u_x, temperature=1.0):
  """`sample` by the full sort of `sorted_cdf` (the reference implementation, kept for tests and benchmarks)."""
  order, cdf = sorted_cdf(logits_xV, temperature)
  rank = jnp.sum(cdf <= u_x[..., None].astype(jnp.float32), axis=-1)
  rank = jnp.minimum(rank, logits_xV.shape[-1] - 1)
  return jnp.take_along_axis(order, rank[..., None], -1)[..., 0]


def invert_full_sort(logits_xV, tok_x, xi_x, temperature=1.0):
  """`invert` by the full sort of `sorted_cdf` (the reference implementation, kept for tests and benchmarks)."""
  order, cdf = sorted_cdf(logits_xV, temperature)
  rank = jnp.argmax(order == tok_x[..., None], axis=-1)
  hi = jnp.take_along_axis(cdf, rank[..., None], -1)[..., 0]
  lo = jnp.where(rank > 0, jnp.take_along_axis(cdf, jnp.maximum(rank - 1, 0)[..., None], -1)[..., 0], 0.0)
  return _inside(lo, hi, xi_x)


def _inside(lo, hi, xi):
  u = lo + xi.astype(jnp.float32) * (hi - lo)
  # Stay inside [lo, hi): rounding must not push u onto the next token's edge.
  return jnp.clip(u, lo, jnp.maximum(lo, jnp.nextafter(hi, jnp.float32(0.0))))


def _sorted_values(lp_RxV):
  """The log-probabilities of each row sorted descending, as `sorted_cdf`'s stable argsort orders them."""
  x = -lp_RxV + 0.0  # + 0.0 turns -0.0 into +0.0: the argsort's comparator treats the two zeros as a tie
  i = jax.lax.bitcast_convert_type(x, jnp.int32)
  key = jnp.where(i < 0, i ^ jnp.int32(0x7FFFFFFF), i)  # int order == float order (negative floats flipped)
  key = jax.lax.sort(key, dimension=-1)
  return -jax.lax.bitcast_convert_type(jnp.where(key < 0, key ^ jnp.int32(0x7FFFFFFF), key), jnp.float32)


def _fallback_rows(need_R, fn, *rows):
  """fn(*rows) where need_R, zeros elsewhere; fn maps [R, ...] row arrays to a tuple of [R] outputs."""
  return jax.lax.platform_dependent(cpu=lambda: _needed_rows(need_R, fn, *rows),
                                    default=lambda: _every_row(need_R, fn, *rows))


def _zeros_like_out(fn, rows):
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, *rows))


def _every_row(need_R, fn, *rows):
  """Accelerators: one batched call for all rows when any row needs it."""
  return jax.lax.cond(jnp.any(need_R), lambda: fn(*rows), lambda: _zeros_like_out(fn, rows))


def _needed_rows(need_R, fn, *rows):
  """CPU: XLA sorts row by row anyway, so loop over the rows that need it only."""
  idx_R = jnp.nonzero(need_R, size=need_R.shape[0], fill_value=0)[0]
  n_need = jnp.sum(need_R)

  def body(carry):
    i, out = carry
    r = idx_R[i]
    got = fn(*(jax.lax.dynamic_slice_in_dim(a, r, 1) for a in rows))
    return i + 1, jax.tree.map(lambda o, g: jax.lax.dynamic_update_slice_in_dim(o, g, r, 0), out, got)

  return jax.lax.while_loop(lambda c: c[0] < n_need, body, (jnp.int32(0), _zeros_like_out(fn, rows)))[1]


def _token_at(lp_RxV, v_R, rank_R):
  """The token at sorted rank `rank`, given its log-probability v: the (rank - #{lp > v})-th token with lp == v."""
  eq = lp_RxV == v_R[:, None]
  j_R = rank_R - jnp.sum(lp_RxV > v_R[:, None], -1)
  first = jnp.argmax(eq, -1)
  # A second or later tied token (j > 0) needs a running count; exact ties are rare, so only then pay for it.
  return jax.lax.cond(jnp.any(j_R > 0), lambda: jnp.argmax(jnp.cumsum(eq, -1) > j_R[:, None], -1),
                      lambda: first).astype(jnp.int32)


def _flat(logits_xV, temperature, *xs):
  lead, v = logits_xV.shape[:-1], logits_xV.shape[-1]
  lp = _log_probs(logits_xV, temperature).reshape(-1, v)
  return lead, lp, [jnp.broadcast_to(x, lead).reshape(-1) for x in xs]


def sample(logits_xV, u_x, temperature=1.0):
  """Inverse-CDF sample: the token whose interval holds u (the same token as `sample_full_sort`).

  Args:
    logits_xV: logits [..., V].
    u_x: uniforms in [0, 1), shape [...].
    temperature: softmax temperature.
  Returns:
    int32 tokens, shape [...].
  """
  lead, lp, (u,) = _flat(logits_xV, temperature, u_x.astype(jnp.float32))
  v = lp.shape[-1]
  top = jax.lax.top_k(lp, min(FAST_K, v))[0]
  cdf_top = jnp.cumsum(jnp.exp(top), -1)
  need = u >= cdf_top[:, -1]
  rank_fast = jnp.minimum(jnp.sum(cdf_top <= u[:, None], -1), top.shape[-1] - 1)

  def full(lp_r, u_r):
    vals = _sorted_values(lp_r)
    rank = jnp.minimum(jnp.sum(jnp.cumsum(jnp.exp(vals), -1) <= u_r[:, None], -1), v - 1)
    return rank, jnp.take_along_axis(vals, rank[:, None], -1)[:, 0]

  rank_slow, val_slow = _fallback_rows(need, full, lp, u)
  rank = jnp.where(need, rank_slow, rank_fast)
  val = jnp.where(need, val_slow, jnp.take_along_axis(top, rank_fast[:, None], -1)[:, 0])
  return _token_at(lp, val, rank).reshape(lead)


def invert(logits_xV, tok_x, xi_x, temperature=1.0):
  """Noise inversion: a u inside the token's interval, at fraction xi in [0, 1) of it (method.md §4A).

  Args:
    logits_xV: logits [..., V].
    tok_x: int tokens [...].
    xi_x: uniforms in [0, 1) picking the point inside the interval.
    temperature: softmax temperature.
  Returns:
    float32 u [...] with sample(logits, u) == tok whenever the token's interval is non-empty in float32
    (the same u as `invert_full_sort`).
  """
  lead, lp, (tok,) = _flat(logits_xV, temperature, tok_x.astype(jnp.int32))
  v = lp.shape[-1]
  lp_tok = jnp.take_along_axis(lp, tok[:, None], -1)
  ids = jax.lax.broadcasted_iota(jnp.int32, lp.shape, 1)
  # The stable argsort puts the token after every more probable token and after its ties of lower id.
  rank = jnp.sum((lp > lp_tok) | ((lp == lp_tok) & (ids < tok[:, None])), -1)
  kf = min(FAST_K, v)
  cdf_top = jnp.cumsum(jnp.exp(jax.lax.top_k(lp, kf)[0]), -1)
  need = rank >= kf

  def full(lp_r, rank_r):
    cdf = jnp.cumsum(jnp.exp(_sorted_values(lp_r)), -1)
    return _edges(cdf, rank_r)

  lo_slow, hi_slow = _fallback_rows(need, full, lp, rank)
  lo_fast, hi_fast = _edges(cdf_top, jnp.minimum(rank, kf - 1))
  u = _inside(jnp.where(need, lo_slow, lo_fast), jnp.where(need, hi_slow, hi_fast),
              jnp.broadcast_to(xi_x, lead).reshape(-1))
  return u.reshape(lead)


def _edges(cdf_RxV, rank_R):
  hi = jnp.take_along_axis(cdf_RxV, rank_R[:, None], -1)[:, 0]
  lo = jnp.where(rank_R > 0, jnp.take_along_axis(cdf_RxV, jnp.maximum(rank_R - 1, 0)[:, None], -1)[:, 0], 0.0)
  return lo, hi
