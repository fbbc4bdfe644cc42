"""The one inverse-CDF convention of the project: vocabulary sorted by probability, descending.

The probabilities are held as integer weights w = round(p * 2**30) (the rounding remainder, ~1e-6 of the mass, goes
to the first token so that they sum to exactly 2**30), in the order of the logits (on a grid of 2**-20 nats below
the row's max; ties, near-ties on that grid included, by token id). The token at rank r owns the integer interval
[C(r-1), C(r)) of U = floor(u * 2**30), where C is the running sum of the sorted weights, so u -> 0 gives the argmax.
Every path that maps noise to tokens (teacher targets, AR sampling, sampled readout, lossless verification) or
tokens to noise (noise inversion) goes through `sample` / `invert`, so a token inverted to u is sampled back from u
exactly (resolvable whenever some float32 u falls in its interval: float32's spacing near 1 is 2**-24, so every
token with p >= 1e-6 with a wide margin).

Why integers: an integer sum is exact in any order, so the edges do not depend on summing in sorted order. That
lets `sample` and `invert` return exactly the tokens and noise of the full sort (`sorted_cdf`: a stable argsort of
the whole vocabulary, kept as the tests' oracle) without sorting:
- The mass at or above an order key is one masked sum over the vocabulary. `sample` bisects on the key (at most 25
  masked sums, all rows at once) for the largest one whose mass exceeds U; the token is then the tied token of
  that key whose running weight crosses U (ties in vocabulary order, as in the stable argsort).
- `invert` needs the token's own edges only: the mass of every token before it in the order.
"""
import jax
import jax.numpy as jnp

ONE_BITS = 30
ONE = 1 << ONE_BITS  # the integer total mass; int32 sums of the weights never overflow
# The order's grid (2**-20 nats, about float32's resolution of a log-probability near -8: tokens closer than that tie,
# by token id) and floor (e**-22 < 2**-31, so every token further below the top has zero weight and its place in the
# order moves no interval). The key range, at most 22 * 2**20 < 2**25, bounds the bisection at 25 masked sums.
ORDER_BITS = 20
FLOOR = 22.0
TOP_KEY = int(FLOOR) << ORDER_BITS  # the key of every row's max logit (centered logit 0)


def _centered(logits_xV, temperature):
  # Logits below the row's max: exact float ops only, so every program gets the same bits (unlike a log-softmax,
  # whose float sum XLA may lay out differently per program).
  x = logits_xV.astype(jnp.float32) / temperature
  return x - jnp.max(x, -1, keepdims=True)


def _keys(y_xV):
  """int32 order keys: the centered logit on a grid of 2**-ORDER_BITS nats, floored at -FLOOR."""
  return jnp.floor((jnp.maximum(y_xV, -FLOOR) + FLOOR) * (1 << ORDER_BITS)).astype(jnp.int32)


def _raw_weights(y_xV):
  """(round(p * ONE) as int32, the remainder ONE - their sum, which belongs to the first token of the order)."""
  # XLA:CPU's exp can differ in its last bit with the fusion around it, and a bit of p can be a unit of w: the
  # barriers give this computation the same fusion in every program that calls it (sample, invert, sorted_cdf).
  e = jnp.exp(jax.lax.optimization_barrier(y_xV))
  w = jnp.round(e / jnp.sum(e, -1, keepdims=True) * ONE).astype(jnp.int32)
  # |rem| is ~1e3 against a first token's weight >= (ONE / V) * (1 - 2e-5); the floor only keeps a degenerate row a
  # valid sampler.
  return jax.lax.optimization_barrier((w, jnp.maximum(ONE - jnp.sum(w, -1), -(jnp.max(w, -1) // 2))))


def _weights(y_xV):
  """int32 weights round(p * ONE) summing to exactly ONE (the remainder on the first token of the order)."""
  w, rem = _raw_weights(y_xV)
  ids = jax.lax.broadcasted_iota(jnp.int32, y_xV.shape, y_xV.ndim - 1)
  return jnp.where(ids == jnp.argmax(_keys(y_xV), -1)[..., None], w + rem[..., None], w)


def _units(u_x):
  """U = floor(u * ONE) in [0, ONE): exact, u * 2**30 only shifts the float32 exponent."""
  return jnp.clip(jnp.floor(u_x.astype(jnp.float32) * ONE), 0, ONE - 1).astype(jnp.int32)


def sorted_cdf(logits_xV, temperature=1.0):
  """Sort order and integer CDF of softmax(logits / temperature), probabilities descending (the convention).

  Args:
    logits_xV: logits [..., V].
    temperature: scalar or array broadcastable to logits[..., :1].
  Returns:
    (order [..., V] int32 token ids by descending probability, cdf [..., V] int32 running sum of the weights, in
    units of 1 / ONE; cdf[..., -1] == ONE).
  """
  # Rows flattened as in `sample` / `invert`: the float softmax sum, and so a weight's last unit, can depend on how
  # XLA lays out the reduction.
  lead, y, _ = _flat(logits_xV, temperature)
  order = jnp.argsort(-_keys(y), axis=-1, stable=True).astype(jnp.int32)
  cdf = jnp.cumsum(jnp.take_along_axis(_weights(y), order, -1), axis=-1)
  return order.reshape(*lead, -1), cdf.reshape(*lead, -1)


def sample_full_sort(logits_xV, u_x, temperature=1.0):
  """`sample` by the full sort of `sorted_cdf` (the reference implementation, kept for tests and benchmarks)."""
  order, cdf = sorted_cdf(logits_xV, temperature)
  rank = jnp.sum(cdf <= _units(u_x)[..., None], axis=-1)
  return jnp.take_along_axis(order, rank[..., None], -1)[..., 0]


def invert_full_sort(logits_xV, tok_x, xi_x, temperature=1.0):
  """`invert` by the full sort of `sorted_cdf` (the reference implementation, kept for tests and benchmarks)."""
  order, cdf = sorted_cdf(logits_xV, temperature)
  rank = jnp.argmax(order == tok_x[..., None], axis=-1)
  hi = jnp.take_along_axis(cdf, rank[..., None], -1)[..., 0]
  lo = jnp.where(rank > 0, jnp.take_along_axis(cdf, jnp.maximum(rank - 1, 0)[..., None], -1)[..., 0], 0)
  return _inside(lo, hi, xi_x)


def _inside(lo, hi, xi):
  """A float32 u with floor(u * ONE) in [lo, hi), at fraction xi of the interval where float32 allows."""
  width = hi - lo
  off = jnp.minimum(jnp.floor(xi.astype(jnp.float32) * width.astype(jnp.float32)).astype(jnp.int32),
                    jnp.maximum(width - 1, 0))
  f = (lo + off).astype(jnp.float32)
  # The float32 nearest an integer may round out of the interval: clip to the first float >= lo and the last < hi.
  first = lo.astype(jnp.float32)
  first = jnp.where(first.astype(jnp.int32) < lo, jnp.nextafter(first, jnp.float32(ONE)), first)
  last = hi.astype(jnp.float32)
  last = jnp.where(last.astype(jnp.int32) >= hi, jnp.nextafter(last, jnp.float32(0)), last)
  return jnp.minimum(jnp.maximum(f, first), last) / ONE


def _flat(logits_xV, temperature, *xs):
  lead, v = logits_xV.shape[:-1], logits_xV.shape[-1]
  y = _centered(logits_xV, temperature).reshape(-1, v)
  return lead, y, [jnp.broadcast_to(a, lead).reshape(-1) for a in xs]


def _threshold(key_RxV, w_RxV, rem_R, u_R):
  """The largest key t with mass(key >= t) > U, mass(key > t) and mass(key >= t).

  Every probe lies at or below the top key (the row's max logit's, TOP_KEY), so each masked sum holds the first
  token and its remainder; the search starts from mass(key >= min key) = ONE > U and mass(key > TOP_KEY) = 0 <= U.
  """
  def body(carry):
    lo, hi, above_hi, above_lo = carry
    mid = (lo + hi) >> 1
    above = jnp.sum(jnp.where(key_RxV >= mid[:, None], w_RxV, 0), -1) + rem_R
    ok = above > u_R
    return (jnp.where(ok, mid, lo), jnp.where(ok, hi, mid), jnp.where(ok, above_hi, above),
            jnp.where(ok, above, above_lo))

  start = (jnp.min(key_RxV, -1), jnp.full_like(u_R, TOP_KEY + 1), jnp.zeros_like(u_R), jnp.full_like(u_R, ONE))
  lo, _, above_hi, above_lo = jax.lax.while_loop(lambda c: jnp.any(c[1] - c[0] > 1), body, start)
  return lo, above_hi, above_lo


def _tied_token(key_RxV, w_RxV, rem_R, t_R, above_R, upto_R, u_R):
  """Among the tokens with key t, in vocabulary order, the first whose running weight from `above` exceeds U."""
  tied = key_RxV == t_R[:, None]
  first = jnp.argmax(tied, -1)
  rem = jnp.where(t_R == TOP_KEY, rem_R, 0)  # the first of the top key's ties is the order's first token

  def running():
    c = above_R[:, None] + rem[:, None] + jnp.cumsum(jnp.where(tied, w_RxV, 0), -1)
    return jnp.argmax(tied & (c > u_R[:, None]), -1)

  # When the first tied token carries all of its key's mass (no tie, the common case) it is the one; only then is
  # the running sum skipped.
  alone = above_R + rem + jnp.take_along_axis(w_RxV, first[:, None], -1)[:, 0] == upto_R
  return jax.lax.cond(jnp.all(alone), lambda: first, running).astype(jnp.int32)


def sample(logits_xV, u_x, temperature=1.0):
  """Inverse-CDF sample: the token whose interval holds u (the same token as `sample_full_sort`).

  Args:
    logits_xV: logits [..., V].
    u_x: uniforms in [0, 1), shape [...].
    temperature: softmax temperature.
  Returns:
    int32 tokens, shape [...].
  """
  lead, y, (u,) = _flat(logits_xV, temperature, u_x)
  (w, rem), key, units = _raw_weights(y), _keys(y), _units(u)
  t, above, upto = _threshold(key, w, rem, units)
  return _tied_token(key, w, rem, t, above, upto, units).reshape(lead)


def invert(logits_xV, tok_x, xi_x, temperature=1.0):
  """Noise inversion: a u inside the token's interval, at fraction xi in [0, 1) of it (method.md §4A).

  Args:
    logits_xV: logits [..., V].
    tok_x: int tokens [...].
    xi_x: uniforms in [0, 1) picking the point inside the interval.
    temperature: softmax temperature.
  Returns:
    float32 u [...] with sample(logits, u) == tok whenever a float32 u lies in the token's interval (the same u
    as `invert_full_sort`).
  """
  lead, y, (tok, xi) = _flat(logits_xV, temperature, tok_x.astype(jnp.int32), xi_x)
  key, w = _keys(y), _weights(y)
  key_tok = jnp.take_along_axis(key, tok[:, None], -1)
  ids = jax.lax.broadcasted_iota(jnp.int32, y.shape, 1)
  # The stable argsort puts the token after every more probable token and after its ties of lower id.
  before = (key > key_tok) | ((key == key_tok) & (ids < tok[:, None]))
  lo = jnp.sum(jnp.where(before, w, 0), -1)
  return _inside(lo, lo + jnp.take_along_axis(w, tok[:, None], -1)[:, 0], xi).reshape(lead)
