"""Distillation targets and losses: equalities between two independent paths on tiny random models."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kforcing_jax.distill import inverse_cdf, losses, targets
from kforcing_jax.models import init_cache
from helpers import random_params, tiny_config

B, N = 2, 12


def _model(seed, **kw):
  model, variables = random_params(tiny_config(**kw), seed=seed)
  return model, variables["params"]


def _tokens(vocab, seed=0):
  return jax.random.randint(jax.random.key(seed), (B, N), 0, vocab)


def _per_window_rows(tok, w):
  # Row (b, t) of a ragged batch holds the context tok[b, :t+1] (padded to w); one cached step reads all windows.
  rows = jnp.repeat(tok[:, :w], w, axis=0)
  n_new = jnp.tile(jnp.arange(1, w + 1), tok.shape[0])
  return rows, n_new


def test_self_forcing_from_ar_equals_teacher_inverse_cdf_samples():
  model, params = _model(1, k_max=0)
  tok = _tokens(model.cfg.vocab_size)
  w = N - 1
  noise = jax.random.uniform(jax.random.key(2), (B, w, 1))
  ctx, noise_out, tgt = jax.jit(functools.partial(targets.self_forcing_from_ar, model))(params, tok, noise, jnp.ones((B,)))
  assert ctx.shape == (B, w) and tgt.shape == (B, w, 1)
  np.testing.assert_array_equal(noise_out, noise)
  # Independent path: a KV-cached prefill of each context alone, read after its last token.
  rows, n_new = _per_window_rows(tok, w)
  prefill = jax.jit(lambda p, r, n, c: model.apply({"params": p}, r, n, c, method=model.decode, ctx_logits="last"))
  logits, _, _ = prefill(params, rows, n_new, init_cache(model.cfg, B * w, N))
  want = inverse_cdf.sample(logits, noise.reshape(-1))
  np.testing.assert_array_equal(tgt.reshape(-1), want)


def test_doubling_targets_equal_two_cached_decode_steps():
  kh = 2
  model, params = _model(3, k_max=kh)
  tok = _tokens(model.cfg.vocab_size, seed=4)
  w = N - 2 * kh
  noise = jax.random.uniform(jax.random.key(5), (B, w, 2 * kh))
  ctx, _, tgt = jax.jit(functools.partial(targets.self_forcing_doubling, model))(params, tok, noise, jnp.ones((B,)))
  assert ctx.shape == (B, w) and tgt.shape == (B, w, 2 * kh)
  # Two sequential cached decode steps of the k-model, every window as its own (ragged) row.
  rows, n_new = _per_window_rows(tok, w)
  noise_rows = noise.reshape(B * w, 2 * kh)
  tau = jnp.ones((B * w,))
  cache = init_cache(model.cfg, B * w, w + 2 * kh + kh)
  step = jax.jit(lambda *a: model.apply({"params": params}, *a, method=model.decode))
  _, h1, cache = step(rows, n_new, cache, noise_rows[:, :kh], tau)
  y1 = jnp.argmax(h1, -1).astype(jnp.int32)
  _, h2, _ = step(y1, jnp.full((B * w,), kh), cache, noise_rows[:, kh:], tau)
  y2 = jnp.argmax(h2, -1).astype(jnp.int32)
  np.testing.assert_array_equal(tgt.reshape(B * w, 2 * kh), jnp.concatenate([y1, y2], -1))


def test_noise_inversion_maps_back_to_the_data_tokens():
  model, params = _model(6, k_max=0)
  tok = _tokens(model.cfg.vocab_size, seed=7)
  xi = jax.random.uniform(jax.random.key(8), (B, N))
  tau = jnp.ones((B,))
  u = jax.jit(functools.partial(targets.invert_data, model))(params, tok, xi, tau)
  logits = jax.jit(model.apply)({"params": params}, tok)
  np.testing.assert_array_equal(inverse_cdf.sample(logits[:, :-1], u), tok[:, 1:])
  k = 3
  ctx, noise, tgt = jax.jit(functools.partial(targets.noise_inversion, model, k=k))(params, tok, xi, tau)
  assert noise.shape == (B, N - k, k)
  for t in (0, N - k - 1):
    for i in range(k):
      assert jnp.all(tgt[:, t, i] == tok[:, t + 1 + i]) and jnp.all(noise[:, t, i] == u[:, t + i])


def test_slot_cross_entropy_ignores_padding_and_matches_a_manual_mean():
  k, v, w = 2, 7, 5
  logits = jax.random.normal(jax.random.key(0), (B, w, k, v))
  tgt = jax.random.randint(jax.random.key(1), (B, w, k), 0, v)
  mask = jnp.ones((B, w + k)).at[0, -1].set(0.0)  # row 0's last target position is padding
  weight = losses.window_weights(mask, k)
  assert weight[0, -1] == 0 and weight[0, -2] == 1 and jnp.all(weight[1] == 1)
  loss, m = losses.slot_cross_entropy(logits, tgt, weight)
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), tgt[..., None], -1)[..., 0]
  keep = np.asarray(weight, bool)
  np.testing.assert_allclose(loss, np.asarray(ce)[keep].mean(), rtol=1e-6)
  np.testing.assert_allclose(m["loss_slot2"], np.asarray(ce)[..., 1][keep].mean(), rtol=1e-6)
  # The excluded window does not move the loss, whatever its logits.
  loss2, _ = losses.slot_cross_entropy(logits.at[0, -1].add(100.0), tgt, weight)
  np.testing.assert_allclose(loss, loss2, rtol=1e-6)
  correct = np.asarray(jnp.argmax(logits, -1) == tgt)
  np.testing.assert_allclose(m["acc_all"], correct.all(-1)[keep].mean(), rtol=1e-6)


def test_next_token_cross_entropy_ignores_padding():
  v = 11
  logits = jax.random.normal(jax.random.key(0), (B, N, v))
  tok = jax.random.randint(jax.random.key(1), (B, N), 0, v)
  mask = jnp.ones((B, N)).at[1, 6:].set(0.0)
  loss, _ = losses.next_token_cross_entropy(logits, tok, mask)
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tok[:, 1:, None], -1)[..., 0]
  np.testing.assert_allclose(loss, np.asarray(ce)[np.asarray(mask[:, 1:], bool)].mean(), rtol=1e-6)


def test_ar_rollout_equals_the_cached_ar_sampler():
  """Slot i's token is the AR decoder's inverse-CDF sample after the first i-1; slot i's conditional is its logits."""
  from kforcing_jax.decoding import ar
  model, params = _model(9, k_max=0)
  tok = _tokens(model.cfg.vocab_size, seed=10)
  k, w = 3, 6
  noise = jax.random.uniform(jax.random.key(11), (B, w, k))
  y, logp = jax.jit(functools.partial(targets.ar_rollout, model))(params, tok[:, :w], noise, jnp.full((B,), 0.8))
  rows, n_new = _per_window_rows(tok, w)
  u = jnp.zeros((B * w, w + k + 1)).at[jnp.arange(B * w)[:, None], n_new[:, None] + jnp.arange(k)].set(
      noise.reshape(B * w, k))
  cache, first = ar.prefill(model.cfg, params, rows, n_new, u, 0.8, num_tokens=k)
  want, _ = ar.steps(model.cfg, params, cache, first, u, 0.8, num_tokens=k)
  np.testing.assert_array_equal(y.reshape(B * w, k), want)
  seq = jnp.concatenate([rows, jnp.zeros((B * w, k), jnp.int32)], 1)
  seq = seq.at[jnp.arange(B * w)[:, None], n_new[:, None] + jnp.arange(k)].set(want)
  full = jax.nn.log_softmax(model.apply({"params": params}, seq) / 0.8, -1)
  want_logp = jnp.take_along_axis(full, (n_new[:, None] - 1 + jnp.arange(k))[..., None], 1)
  np.testing.assert_allclose(logp.reshape(B * w, k, -1), want_logp, atol=2e-5)


def test_slot_kl_equals_a_direct_computation():
  k, v, w = 3, 9, 4
  logits = jax.random.normal(jax.random.key(0), (B, w, k, v))
  p = jax.random.dirichlet(jax.random.key(1), jnp.full((v,), 0.5), (B, w, k))
  p = p.at[..., 0].set(0.0) / jnp.sum(p.at[..., 0].set(0.0), -1, keepdims=True)  # a zero-mass token: 0 log 0 = 0
  weight = jnp.ones((B, w)).at[1, 0].set(0.0)
  loss, m = losses.slot_kl(logits, jnp.log(p), weight)
  pn, qn = np.asarray(p, np.float64), np.asarray(jax.nn.softmax(logits), np.float64)
  kl = np.sum(np.where(pn > 0, pn * (np.log(np.where(pn > 0, pn, 1)) - np.log(qn)), 0), -1)
  keep = np.asarray(weight, bool)
  np.testing.assert_allclose(loss, kl[keep].mean(), rtol=1e-5)
  np.testing.assert_allclose(m["loss_slot3"], kl[..., 2][keep].mean(), rtol=1e-5)
  # Its gradient vanishes where the student's softmax equals the target.
  g = jax.grad(lambda x: losses.slot_kl(x, jnp.log(p), weight)[0])(jnp.log(p))
  assert float(jnp.max(jnp.abs(g))) < 1e-6


def test_prefix_slot_weighting_reweights_the_loss_not_the_diagnostics():
  k, v, w = 4, 7, 5
  logits = jax.random.normal(jax.random.key(2), (B, w, k, v))
  tgt = jax.random.randint(jax.random.key(3), (B, w, k), 0, v)
  logp = jax.nn.log_softmax(jax.random.normal(jax.random.key(4), (B, w, k, v)))
  weight = jnp.ones((B, w))
  scale = losses.slot_scales(k, "prefix")
  np.testing.assert_allclose(scale, np.array([4, 3, 2, 1]) / 2.5, rtol=1e-6)
  np.testing.assert_allclose(losses.slot_scales(k, "uniform"), np.ones(k))
  for fn, arg in ((losses.slot_kl, logp), (losses.slot_cross_entropy, tgt)):
    plain, pm = fn(logits, arg, weight)
    weighted, wm = fn(logits, arg, weight, slot_scale_K=scale)
    per_slot = np.array([pm[f"loss_slot{i + 1}"] for i in range(k)])
    np.testing.assert_allclose(plain, per_slot.mean(), rtol=1e-5)
    np.testing.assert_allclose(weighted, np.mean(per_slot * np.asarray(scale)), rtol=1e-5)
    np.testing.assert_allclose([wm[f"loss_slot{i + 1}"] for i in range(k)], per_slot, rtol=1e-6)
  with pytest.raises(ValueError, match="slot_weighting"):
    losses.slot_scales(k, "linear")


@pytest.mark.parametrize("rollout", ["teacher", "student"])
def test_kl_objective_targets_follow_the_rollout(rollout):
  """The KL objective's targets are the AR teacher's conditionals along the teacher's or the student's tokens."""
  from kforcing_jax.distill import objectives
  t_model, t_params = _model(12, k_max=0)
  s_model, s_params = _model(13, k_max=2, hint_noise="previous")
  tok = _tokens(t_model.cfg.vocab_size, seed=14)
  obj = objectives.Objective(k=2, loss="kl", readout="sample", rollout=rollout)
  key = jax.random.key(15)
  run = jax.jit(lambda sp, tp: objectives.pflm_loss(obj, s_model, sp, t_model, tp, tok, jnp.ones((B, N)), key))
  loss, m = run(s_params, t_params)
  # Recompute the same step by hand from the same key split.
  k_noise, _ = jax.random.split(key)
  ctx = tok[:, : N - 2]
  noise = jax.random.uniform(k_noise, (B, N - 2, 2))
  tau = jnp.ones((B,))
  q = s_model.apply({"params": s_params}, ctx, noise, tau, method=s_model.staircase)
  if rollout == "student":
    y = inverse_cdf.sample(q, noise)
    logp = targets.ar_along(t_model, t_params, ctx, y[..., :1], tau)
  else:
    _, logp = targets.ar_rollout(t_model, t_params, ctx, noise, tau)
  want, _ = losses.slot_kl(q, logp, jnp.ones((B, N - 2)))
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  assert {"loss_slot1", "loss_slot2", "ce_slot1", "acc_slot2"} <= set(m)
