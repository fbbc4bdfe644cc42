"""The sort-free inverse CDF against the full-sort reference: the same tokens and the same noise, bit for bit."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kforcing_jax.distill import inverse_cdf


def _logits(kind, rows, vocab, seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(rows, vocab)).astype(np.float32)
  if kind == "flat":
    return x * 0.3
  if kind == "peaked":
    return x * 6.0
  if kind == "ties":  # few distinct values: many exact ties, broken by token id
    return np.round(x * 1.5).astype(np.float32)
  if kind == "masked":  # -inf tokens tie at p = 0, some rows have a one-token support
    x[:, 1 + rng.permutation(vocab - 1)[: vocab // 2]] = -np.inf
    x[0, 1:] = -np.inf
    return x
  raise ValueError(kind)


def _noise(logits, seed):
  """Uniform u plus u at the reference's exact interval edges, just below them, and at the far ends of [0, 1)."""
  rows = logits.shape[0]
  rng = np.random.default_rng(seed)
  _, cdf = jax.device_get(inverse_cdf.sorted_cdf(jnp.asarray(logits)))
  r = rng.integers(0, logits.shape[1], size=rows)
  edge = cdf[np.arange(rows), r]
  last_fast = cdf[:, min(inverse_cdf.FAST_K, logits.shape[1]) - 1]  # where top-k hands over to the sort
  cols = [rng.uniform(size=rows), edge, np.nextafter(edge, 0), np.zeros(rows), np.full(rows, 1e-9),
          np.full(rows, 1 - 1e-7), np.full(rows, np.nextafter(np.float32(1), np.float32(0))),
          cdf[:, -1], np.nextafter(cdf[:, -1], 0), last_fast, np.nextafter(last_fast, 0)]
  return np.clip(np.stack(cols, 1), 0, np.nextafter(np.float32(1), np.float32(0))).astype(np.float32)


KINDS = ("flat", "peaked", "ties", "masked")


@pytest.mark.parametrize("vocab", [7, 300])
def test_sample_equals_the_full_sort(vocab):
  logits = np.concatenate([_logits(kind, 6, vocab, seed=vocab + i) for i, kind in enumerate(KINDS)])
  u = _noise(logits, seed=1)  # [rows, 11]: mixes rows served by top-k and rows that need the sort
  lg = jnp.broadcast_to(jnp.asarray(logits)[:, None], (*u.shape, vocab))
  want = inverse_cdf.sample_full_sort(lg, jnp.asarray(u))
  np.testing.assert_array_equal(jax.jit(inverse_cdf.sample)(lg, jnp.asarray(u)), want)
  np.testing.assert_array_equal(jax.vmap(inverse_cdf.sample)(lg, jnp.asarray(u)), want)


def test_sample_with_per_row_temperature_equals_the_full_sort():
  logits = jnp.asarray(_logits("peaked", 4, 300, seed=3)).reshape(2, 2, 300)
  tau = jnp.asarray([0.5, 2.0])[:, None, None]
  u = jax.random.uniform(jax.random.key(0), (2, 2))
  np.testing.assert_array_equal(inverse_cdf.sample(logits, u, tau), inverse_cdf.sample_full_sort(logits, u, tau))


def test_invert_equals_the_full_sort_and_samples_back():
  logits = jnp.asarray(np.concatenate([_logits(kind, 2, 300, seed=5 + i) for i, kind in enumerate(KINDS)]))
  rng = np.random.default_rng(0)
  p = np.asarray(jax.nn.softmax(logits, -1))
  likely = np.asarray([rng.choice(300, p=row / row.sum()) for row in p.astype(np.float64)])
  tok = np.stack([likely, rng.integers(0, 300, 8)], 1)
  tok = jnp.asarray(tok, jnp.int32)  # column 0: likely tokens, column 1: any token (far tail, p = 0 included)
  lg = jnp.broadcast_to(logits[:, None], (8, 2, 300))
  for xi in (0.0, 0.37, float(np.nextafter(np.float32(1), np.float32(0)))):
    xi_x = jnp.full(tok.shape, xi, jnp.float32)
    u = jax.jit(inverse_cdf.invert)(lg, tok, xi_x)
    np.testing.assert_array_equal(u, jax.jit(inverse_cdf.invert_full_sort)(lg, tok, xi_x))
  # Round trip wherever the token's float32 interval is non-empty.
  wide = np.asarray(jnp.take_along_axis(jax.nn.softmax(lg, -1), tok[..., None], -1)[..., 0]) > 1e-6
  np.testing.assert_array_equal(np.asarray(inverse_cdf.sample(lg, u))[wide], np.asarray(tok)[wide])
  assert wide[:, 0].all()


def test_the_accelerator_and_cpu_fallbacks_agree():
  need = jnp.asarray([True, False, True, False])
  rows = jnp.arange(12.0).reshape(4, 3)
  fn = lambda r: (jnp.sum(r, -1), jnp.max(r, -1).astype(jnp.int32))
  every = inverse_cdf._every_row(need, fn, rows)
  loop = inverse_cdf._needed_rows(need, fn, rows)
  for e, l, full in zip(every, loop, fn(rows)):
    np.testing.assert_array_equal(jnp.where(need, e, 0), l)
    np.testing.assert_array_equal(l, jnp.where(need, full, 0))
