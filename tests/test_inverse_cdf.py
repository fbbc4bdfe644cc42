"""The sort-free inverse CDF against the full-sort reference: the same tokens and the same noise, bit for bit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kforcing_jax.distill import inverse_cdf

ONE = inverse_cdf.ONE
BELOW_ONE = np.nextafter(np.float32(1), np.float32(0))


def _logits(kind, rows, vocab, seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(rows, vocab)).astype(np.float32)
  if kind == "flat":
    return x * 0.3
  if kind == "peaked":
    return x * 6.0
  if kind == "ties":  # few distinct values: many exact ties, broken by token id (the argmax's ties included)
    return np.round(x * 1.5).astype(np.float32)
  if kind == "masked":  # -inf tokens tie at p = 0, some rows have a one-token support
    x[:, 1 + rng.permutation(vocab - 1)[: vocab // 2]] = -np.inf
    x[0, 1:] = -np.inf
    return x
  raise ValueError(kind)


def _around(units):
  """float32 u at, just below and just above the integer edge `units` (float32 may not hold the edge itself)."""
  u = np.float32(units) / np.float32(ONE)
  return [u, np.nextafter(u, np.float32(0)), np.nextafter(u, np.float32(1))]


def _noise(logits, seed):
  """Uniform u plus u at and around the reference's interval edges, and at the far ends of [0, 1)."""
  rows = logits.shape[0]
  rng = np.random.default_rng(seed)
  _, cdf = jax.device_get(jax.jit(inverse_cdf.sorted_cdf)(jnp.asarray(logits)))
  edge = cdf[np.arange(rows), rng.integers(0, logits.shape[1], size=rows)]
  small = cdf[:, 0]  # the argmax's upper edge: exact in float32 when below 2**24 units
  cols = [rng.uniform(size=rows), *_around(edge), *_around(small), *_around(cdf[:, max(logits.shape[1] - 2, 0)]),
          np.zeros(rows), np.full(rows, 1e-9), np.full(rows, 1 - 1e-7), np.full(rows, BELOW_ONE)]
  return np.clip(np.stack(cols, 1), 0, BELOW_ONE).astype(np.float32)


KINDS = ("flat", "peaked", "ties", "masked")


@pytest.mark.parametrize("vocab", [1, 7, 300])
def test_sample_equals_the_full_sort(vocab):
  logits = np.concatenate([_logits(kind, 6, vocab, seed=vocab + i) for i, kind in enumerate(KINDS)])
  u = _noise(logits, seed=1)
  lg = jnp.broadcast_to(jnp.asarray(logits)[:, None], (*u.shape, vocab))
  # Both compiled: XLA:CPU's exp can differ in its last bit between a fused and a lone op, which moves a weight by
  # a unit, and these u sit right at the edges.
  want = jax.jit(inverse_cdf.sample_full_sort)(lg, jnp.asarray(u))
  np.testing.assert_array_equal(jax.jit(inverse_cdf.sample)(lg, jnp.asarray(u)), want)
  np.testing.assert_array_equal(jax.jit(jax.vmap(inverse_cdf.sample))(lg, jnp.asarray(u)), want)


def test_sample_with_per_row_temperature_equals_the_full_sort():
  logits = jnp.asarray(_logits("peaked", 4, 300, seed=3)).reshape(2, 2, 300)
  tau = jnp.asarray([0.5, 2.0])[:, None, None]
  u = jax.random.uniform(jax.random.key(0), (2, 2))
  np.testing.assert_array_equal(jax.jit(inverse_cdf.sample)(logits, u, tau),
                                jax.jit(inverse_cdf.sample_full_sort)(logits, u, tau))


def test_weights_are_the_rounded_probabilities_and_sum_to_one():
  logits = jnp.asarray(np.concatenate([_logits(kind, 3, 300, seed=i) for i, kind in enumerate(KINDS)]))
  _, cdf = inverse_cdf.sorted_cdf(logits)
  np.testing.assert_array_equal(cdf[:, -1], ONE)
  y = logits - jnp.max(logits, -1, keepdims=True)
  w = np.asarray(inverse_cdf._weights(y), np.int64)
  e = jnp.exp(y)
  want = np.round(np.asarray(e / jnp.sum(e, -1, keepdims=True), np.float64) * ONE)
  off = np.abs(w - want)
  top = (np.arange(len(w)), np.asarray(jnp.argmax(logits, -1)))  # no near-ties at the top in these rows
  assert off[top].max() < 1e-5 * ONE  # the rounding remainder: ~1e-6 of the mass
  off[top] = 0
  assert off.max() == 0 and (w >= 0).all()


def test_the_convention_is_the_float64_sorted_cdf_up_to_rounding():
  """The integer edges move the float CDF's by ~1e-6 of mass at most: a u-draw lands on another token that rarely."""
  logits = np.concatenate([_logits(kind, 8, 300, seed=20 + i) for i, kind in enumerate(KINDS)])
  u = np.random.default_rng(0).uniform(size=(32, 256)).astype(np.float32)
  got = np.asarray(inverse_cdf.sample(jnp.broadcast_to(jnp.asarray(logits)[:, None], (32, 256, 300)), jnp.asarray(u)))
  p = np.asarray(jax.nn.softmax(jnp.asarray(logits)), np.float64)
  order = np.argsort(-p, axis=-1, kind="stable")
  cdf = np.cumsum(np.take_along_axis(p, order, -1), -1)
  rank = np.minimum((cdf[:, None, :] <= u[..., None]).sum(-1), 299)
  want = np.take_along_axis(order, rank, -1)
  assert (got != want).mean() < 1e-3, (got != want).mean()


def test_invert_equals_the_full_sort_and_samples_back():
  logits = jnp.asarray(np.concatenate([_logits(kind, 2, 300, seed=5 + i) for i, kind in enumerate(KINDS)]))
  rng = np.random.default_rng(0)
  p = np.asarray(jax.nn.softmax(logits, -1))
  likely = np.asarray([rng.choice(300, p=row / row.sum()) for row in p.astype(np.float64)])
  tok = np.stack([likely, rng.integers(0, 300, 8)], 1)
  tok = jnp.asarray(tok, jnp.int32)  # column 0: likely tokens, column 1: any token (far tail, p = 0 included)
  lg = jnp.broadcast_to(logits[:, None], (8, 2, 300))
  for xi in (0.0, 0.37, float(BELOW_ONE)):
    xi_x = jnp.full(tok.shape, xi, jnp.float32)
    u = jax.jit(inverse_cdf.invert)(lg, tok, xi_x)
    np.testing.assert_array_equal(u, jax.jit(inverse_cdf.invert_full_sort)(lg, tok, xi_x))
    # Round trip wherever the token's interval is wider than float32's spacing near 1.
    wide = np.asarray(jnp.take_along_axis(jax.nn.softmax(lg, -1), tok[..., None], -1)[..., 0]) > 1e-6
    np.testing.assert_array_equal(np.asarray(inverse_cdf.sample(lg, u))[wide], np.asarray(tok)[wide])
    assert wide[:, 0].all()


def test_invert_lands_inside_narrow_intervals_far_from_zero():
  """A token of weight 1..3 units late in the order: float32 holds no such u, so `invert` gives the last float below
  its upper edge; a token whose interval does hold a float32 comes back exactly."""
  lo = jnp.asarray([ONE // 2 + 5, ONE // 2 + 64, 7], jnp.int32)
  hi = lo + jnp.asarray([3, 64, 1], jnp.int32)
  u = np.asarray(inverse_cdf._inside(lo, hi, jnp.full((3,), 0.5, jnp.float32)), np.float64)
  units = np.floor(u * ONE)
  assert units[0] < int(lo[0]) and units[1] == int(lo[1]) and units[2] == 7


def test_the_bisection_brackets_u_by_the_masses_of_the_full_sort():
  """`_threshold`'s key t and the masses above t and at or above it are the full sort's, and U lies between them."""
  logits = jnp.asarray(np.concatenate([_logits(kind, 4, 300, seed=40 + i) for i, kind in enumerate(KINDS)]))
  u = jnp.asarray(_noise(np.asarray(logits), seed=2)[:, 0])
  _, y, (u_r,) = inverse_cdf._flat(logits, 1.0, u)
  (w, rem), key, units = inverse_cdf._raw_weights(y), inverse_cdf._keys(y), inverse_cdf._units(u_r)
  t, above, upto = jax.jit(inverse_cdf._threshold)(key, w, rem, units)
  order, cdf = inverse_cdf.sorted_cdf(logits)
  key_sorted = np.take_along_axis(np.asarray(key), np.asarray(order), -1)
  for r in range(len(t)):
    ranks = np.nonzero(key_sorted[r] == int(t[r]))[0]
    assert ranks.size and int(above[r]) == (int(cdf[r, ranks[0] - 1]) if ranks[0] else 0)
    assert int(upto[r]) == int(cdf[r, ranks[-1]]) and int(above[r]) <= int(units[r]) < int(upto[r])
