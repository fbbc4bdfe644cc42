"""The one inverse-CDF convention of the project: vocabulary sorted by probability, descending.

Token r owns the interval [cdf[r-1], cdf[r]) of u in [0, 1), where cdf is the running sum of the sorted
probabilities, so u -> 0 gives the argmax. Every path that maps noise to tokens (teacher targets, AR sampling,
lossless verification) or tokens to noise (noise inversion) goes through `sorted_cdf`, so a token inverted to u is
sampled back from u exactly (the two sides share the same float32 interval edges; a token is resolvable when its
interval is wider than float32's spacing near 1, about 6e-8, i.e. every token with p >= 1e-6 with a wide margin).
"""
import jax
import jax.numpy as jnp


def sorted_cdf(logits_xV, temperature=1.0):
  """Sort order and CDF of softmax(logits / temperature), probabilities descending.

  Args:
    logits_xV: logits [..., V].
    temperature: scalar or array broadcastable to logits[..., :1].
  Returns:
    (order [..., V] int32 token ids by descending probability, cdf [..., V] float32 running sum).
  """
  lp = jax.nn.log_softmax(logits_xV.astype(jnp.float32) / temperature, axis=-1)
  order = jnp.argsort(-lp, axis=-1, stable=True).astype(jnp.int32)
  p_sorted = jnp.exp(jnp.take_along_axis(lp, order, -1))
  return order, jnp.cumsum(p_sorted, axis=-1)


def sample(logits_xV, u_x, temperature=1.0):
  """Inverse-CDF sample: the token whose interval holds u.

  Args:
    logits_xV: logits [..., V].
    u_x: uniforms in [0, 1), shape [...].
    temperature: softmax temperature.
  Returns:
    int32 tokens, shape [...].
  """
  order, cdf = sorted_cdf(logits_xV, temperature)
  rank = jnp.sum(cdf <= u_x[..., None].astype(jnp.float32), axis=-1)
  rank = jnp.minimum(rank, logits_xV.shape[-1] - 1)
  return jnp.take_along_axis(order, rank[..., None], -1)[..., 0]


def invert(logits_xV, tok_x, xi_x, temperature=1.0):
  """Noise inversion: a u inside the token's interval, at fraction xi in [0, 1) of it (method.md §4A).

  Args:
    logits_xV: logits [..., V].
    tok_x: int tokens [...].
    xi_x: uniforms in [0, 1) picking the point inside the interval.
    temperature: softmax temperature.
  Returns:
    float32 u [...] with sample(logits, u) == tok whenever the token's interval is non-empty in float32.
  """
  order, cdf = sorted_cdf(logits_xV, temperature)
  rank = jnp.argmax(order == tok_x[..., None], axis=-1)
  hi = jnp.take_along_axis(cdf, rank[..., None], -1)[..., 0]
  lo = jnp.where(rank > 0, jnp.take_along_axis(cdf, jnp.maximum(rank - 1, 0)[..., None], -1)[..., 0], 0.0)
  u = lo + xi_x.astype(jnp.float32) * (hi - lo)
  # Stay inside [lo, hi): rounding must not push u onto the next token's edge.
  return jnp.clip(u, lo, jnp.maximum(lo, jnp.nextafter(hi, jnp.float32(0.0))))
