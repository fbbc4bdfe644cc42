"""Property tests of the backbone, the AR LM and the push-forward LM (tiny configs, jitted)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_params, tiny_config
from kforcing_jax.models import KForcingLM, ModelConfig, check_params, init_cache
from kforcing_jax.models import attention
from kforcing_jax.training import sharding

TOL = 2e-5


def _apply(model, method, *args, **kw):
  fn = functools.partial(model.apply, method=getattr(model, method), **kw)
  return jax.jit(fn)(*args)


@pytest.fixture(scope="module")
def pflm():
  cfg = tiny_config(vocab_size=64, k_max=4)
  return random_params(cfg, seed=3)


def _tokens(b, n, v=64, seed=0):
  return jax.random.randint(jax.random.key(seed), (b, n), 0, v)


def test_ar_cache_decode_equals_full_forward(pflm):
  model, params = pflm
  cfg = model.cfg
  tok = _tokens(3, 20)
  full = _apply(model, "__call__", params, tok)
  cache = init_cache(cfg, 3, 24)
  step = jax.jit(functools.partial(model.apply, method=model.decode, ctx_logits="all"))
  logits, _, cache = step(params, tok[:, :5], jnp.full((3,), 5), cache)
  outs = [logits]
  for j in range(5, 20):
    logits, _, cache = step(params, tok[:, j:j + 1], jnp.ones((3,), jnp.int32), cache)
    outs.append(logits)
  np.testing.assert_allclose(np.concatenate(outs, 1), full, atol=TOL)
  assert int(cache["len"][0]) == 20


def test_ar_decode_ragged_rows_equal_full_forward(pflm):
  model, params = pflm
  tok = _tokens(3, 16, seed=1)
  full = _apply(model, "__call__", params, tok)
  lens = jnp.array([3, 7, 5])
  cache = init_cache(model.cfg, 3, 24)
  step = jax.jit(functools.partial(model.apply, method=model.decode, ctx_logits="last"))
  last, _, cache = step(params, tok[:, :7], lens, cache)  # right-padded prompts of different lengths
  np.testing.assert_allclose(last, full[jnp.arange(3), lens - 1], atol=TOL)
  for _ in range(4):  # then one token per row at each row's own position
    pos = cache["len"]
    last, _, cache = step(params, tok[jnp.arange(3), pos][:, None], jnp.ones((3,), jnp.int32), cache)
    np.testing.assert_allclose(last, full[jnp.arange(3), pos], atol=TOL)


@pytest.mark.parametrize("kk", [1, 2, 3, 4])
def test_staircase_window_equals_decode_path(pflm, kk):
  model, params = pflm
  w = 10
  tok = _tokens(2, w, seed=2)
  u = jax.random.uniform(jax.random.key(4), (2, w, kk))
  tau = jnp.array([1.0, 0.7])
  stair = _apply(model, "staircase", params, tok, u, tau)
  step = jax.jit(functools.partial(model.apply, method=model.decode))
  for t in range(w):  # the prompt is padded to w tokens, of which t + 1 are real: one compile for all t
    cache = init_cache(model.cfg, 2, 16)
    _, hints, _ = step(params, tok, jnp.full((2,), t + 1), cache, u[:, t], tau)
    np.testing.assert_allclose(hints, stair[:, t], atol=TOL, err_msg=f"window {t}")


@pytest.mark.parametrize("b,w,kk", [(1, 5, 1), (2, 9, 2), (3, 12, 4), (2, 17, 3)])
def test_split_equals_dense_forward_and_gradients(b, w, kk):
  rng = np.random.default_rng(w * 10 + kk)
  h, d = 2, 8
  mk = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
  args = (mk(b, w, h, d), mk(b, w, h, d), mk(b, w, h, d), mk(b, w, kk, h, d), mk(b, w, kk, h, d), mk(b, w, kk, h, d))
  cot = (mk(b, w, h, d), mk(b, w, kk, h, d))
  for impl in ("split", "dense"):
    out = attention.staircase_attention(*args, impl=impl)
    if impl == "split":
      ref_out = out
  dense = attention.staircase_attention(*args, impl="dense")
  for a, r in zip(ref_out, dense):
    np.testing.assert_allclose(a, r, atol=1e-5)
  loss = lambda impl, *a: sum(jnp.vdot(o, c) for o, c in zip(attention.staircase_attention(*a, impl=impl), cot))
  g_split = jax.jit(jax.grad(functools.partial(loss, "split"), argnums=tuple(range(6))))(*args)
  g_dense = jax.jit(jax.grad(functools.partial(loss, "dense"), argnums=tuple(range(6))))(*args)
  for a, r in zip(g_split, g_dense):
    np.testing.assert_allclose(a, r, atol=1e-4)


def test_split_equals_dense_through_the_model(pflm):
  model, params = pflm
  dense = KForcingLM(model.cfg.replace(attention_impl="dense"))
  tok = _tokens(2, 11, seed=5)
  u = jax.random.uniform(jax.random.key(6), (2, 11, 4))
  tau = jnp.ones((2,))
  loss = lambda m, p: jnp.sum(jnp.sin(m.apply(p, tok, u, tau, method=m.staircase)))
  np.testing.assert_allclose(jax.jit(functools.partial(loss, model))(params),
                             jax.jit(functools.partial(loss, dense))(params), rtol=1e-5)
  g1 = jax.jit(jax.grad(functools.partial(loss, model)))(params)
  g2 = jax.jit(jax.grad(functools.partial(loss, dense)))(params)
  for a, r in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-4)


def test_context_stream_equals_ar_forward(pflm):
  model, params = pflm
  tok = _tokens(2, 13, seed=7)
  u = jax.random.uniform(jax.random.key(8), (2, 13, 4))
  _, ctx = _apply(model, "staircase", params, tok, u, jnp.ones((2,)), return_ctx_logits=True)
  np.testing.assert_allclose(ctx, _apply(model, "__call__", params, tok), atol=TOL)


def test_causality_by_gradient(pflm):
  """Hint (t, i) depends on context <= t and noise (t, j <= i) only; context never sees the future."""
  model, params = pflm
  w, kk, v = 8, 3, model.cfg.vocab_size
  tok = jnp.asarray(np.random.default_rng(0).permutation(v)[:w])[None]  # unique ids: embedding row == position
  u = jax.random.uniform(jax.random.key(9), (1, w, kk))
  tau = jnp.ones((1,))

  def out(p, u, t, i):
    return jnp.sum(model.apply(p, tok, u, tau, method=model.staircase)[0, t, i] ** 2)

  grad_out = jax.jit(jax.grad(out, argnums=(0, 1)))
  for t, i in [(0, 0), (3, 1), (5, 2), (7, 0)]:
    g_emb, g_u = grad_out(params, u, t, i)
    row_norm = np.linalg.norm(np.asarray(g_emb["params"]["embed"]["embedding"])[np.asarray(tok[0])], axis=-1)
    assert np.all(row_norm[t + 1:] == 0) and np.all(row_norm[: t + 1] > 0), (t, i, row_norm)
    g_u = np.asarray(g_u[0])
    allowed = np.zeros((w, kk), bool)
    allowed[t, : i + 1] = True
    assert np.all(g_u[~allowed] == 0) and np.all(g_u[allowed] != 0), (t, i, g_u)

  def ctx_out(p, t):
    return jnp.sum(model.apply(p, tok, u, tau, return_ctx_logits=True, method=model.staircase)[1][0, t] ** 2)

  g_emb = jax.jit(jax.grad(ctx_out), static_argnums=1)(params, 4)
  row_norm = np.linalg.norm(np.asarray(g_emb["params"]["embed"]["embedding"])[np.asarray(tok[0])], axis=-1)
  assert np.all(row_norm[5:] == 0) and np.all(row_norm[:5] > 0)
  g_u = jax.jit(jax.grad(lambda uu: jnp.sum(model.apply(params, tok, uu, tau, return_ctx_logits=True,
                                                method=model.staircase)[1] ** 2)))(u)
  assert np.all(np.asarray(g_u) == 0)  # the context stream never sees a hint


def test_first_k_outputs_independent_of_later_hints(pflm):
  model, params = pflm
  tok = _tokens(2, 9, seed=10)
  u4 = jax.random.uniform(jax.random.key(11), (2, 9, 4))
  tau = jnp.ones((2,))
  full = _apply(model, "staircase", params, tok, u4, tau)
  for kk in (1, 2, 3):
    np.testing.assert_allclose(_apply(model, "staircase", params, tok, u4[:, :, :kk], tau), full[:, :, :kk],
                               atol=TOL)


def test_double_forward_equals_two_decode_steps(pflm):
  model, params = pflm
  cfg = model.cfg.replace(k_max=2)
  m2 = KForcingLM(cfg)
  p2 = {"params": params["params"]}
  w, kk = 6, 2
  tok = _tokens(2, w, seed=12)
  u1 = jax.random.uniform(jax.random.key(13), (2, w, kk))
  u2 = jax.random.uniform(jax.random.key(14), (2, w, kk))
  tau = jnp.ones((2,))
  y1 = jnp.argmax(_apply(m2, "staircase", p2, tok, u1, tau), -1)
  second = _apply(m2, "double_forward", p2, tok, y1, u2, tau)
  step = jax.jit(functools.partial(m2.apply, method=m2.decode))
  for t in range(w):
    cache = init_cache(cfg, 2, 16)
    _, h1, cache = step(p2, tok, jnp.full((2,), t + 1), cache, u1[:, t], tau)
    np.testing.assert_array_equal(jnp.argmax(h1, -1), y1[:, t])
    _, h2, _ = step(p2, y1[:, t], jnp.full((2,), kk), cache, u2[:, t], tau)
    np.testing.assert_allclose(h2, second[:, t], atol=TOL)


def test_mask_index_logit_forced():
  model, params = random_params(tiny_config(vocab_size=64, mask_index=7, k_max=1), seed=1)
  tok = _tokens(1, 6)
  assert np.all(np.asarray(_apply(model, "__call__", params, tok))[..., 7] == -1000.0)
  u = jnp.full((1, 5, 1), 0.5)
  assert np.all(np.asarray(_apply(model, "staircase", params, tok[:, :5], u, jnp.ones((1,))))[..., 7] == -1000.0)


def test_bf16_compute_close_to_fp32(pflm):
  model, params = pflm
  m16 = KForcingLM(model.cfg.replace(dtype="bfloat16"))
  tok = _tokens(2, 12, seed=15)
  a = _apply(model, "__call__", params, tok)
  b = _apply(m16, "__call__", params, tok)
  assert b.dtype == jnp.float32
  np.testing.assert_allclose(b, a, atol=0.15 * float(jnp.abs(a).max()))


def test_sharded_equals_unsharded(pflm):
  model, params = pflm
  assert jax.device_count() == 8
  mesh = sharding.make_mesh([("data", 4), ("model", 2)])
  from kforcing_jax.models import abstract_params
  shard = sharding.shardings_for(abstract_params(model.cfg), mesh)
  tok = _tokens(8, 12, seed=16)
  u = jax.random.uniform(jax.random.key(17), (8, 12, 4))
  tau = jnp.ones((8,))

  def loss(p, tok, u):
    return jnp.mean(jax.nn.logsumexp(model.apply(p, tok, u, tau, method=model.staircase), -1))

  ref_val, ref_grad = jax.jit(jax.value_and_grad(loss))(params, tok, u)
  with sharding.activate(mesh):
    bs = sharding.batch_sharding(mesh)
    f = jax.jit(jax.value_and_grad(loss), in_shardings=(shard, bs, sharding.batch_sharding(mesh, ndim=3)),
                out_shardings=(sharding.replicated(mesh), shard))
    val, grad = f(jax.device_put(params, shard), jax.device_put(tok, bs), u)
  assert grad["params"]["block_0"]["attn_qkv"].sharding.spec[2] == "model"
  np.testing.assert_allclose(val, ref_val, rtol=1e-5)
  for a, r in zip(jax.tree.leaves(grad), jax.tree.leaves(ref_grad)):
    np.testing.assert_allclose(a, r, atol=1e-5)


def test_bad_inputs(pflm):
  model, params = pflm
  with pytest.raises(ValueError, match="attention_impl"):
    tiny_config(attention_impl="flash")
  with pytest.raises(ValueError, match="K=5"):
    model.apply(params, _tokens(1, 4), jnp.zeros((1, 4, 5)), jnp.ones((1,)), method=model.staircase)
  with pytest.raises(ValueError, match="max_len"):
    model.apply(params, _tokens(1, model.cfg.max_len + 1))
  with pytest.raises(ValueError, match="max_len"):
    model.apply(params, _tokens(1, model.cfg.max_len - 2), jnp.zeros((1, model.cfg.max_len - 2, 4)),
                jnp.ones((1,)), method=model.staircase)
  with pytest.raises(ValueError, match="unknown model config key"):
    ModelConfig.from_dict({"vocab_size": 10, "num_layer": 2})
  with pytest.raises(ValueError, match="embedding"):
    check_params(model.cfg.replace(vocab_size=128), params["params"])
  ar = KForcingLM(model.cfg.replace(k_max=0))
  with pytest.raises(ValueError, match="AR model"):
    ar.apply(params, _tokens(1, 4), jnp.zeros((1, 4, 1)), jnp.ones((1,)), method=ar.staircase)


def test_checkpoint_relative_workdir_round_trip(pflm, tmp_path, monkeypatch):
  from kforcing_jax import workdir as checkpoint
  model, params = pflm
  monkeypatch.chdir(tmp_path)
  w = checkpoint.Writer("relative_run")
  w.save(3, params["params"], {"model": model.cfg.to_dict()})
  w.close()
  step, out = checkpoint.restore("relative_run")
  assert step == 3 and out["meta"]["model"]["k_max"] == model.cfg.k_max
  np.testing.assert_array_equal(out["params"]["embed"]["embedding"], params["params"]["embed"]["embedding"])


@pytest.mark.parametrize("hint_noise", ["current", "previous", "interleaved"])
def test_which_noises_each_hint_sees(hint_noise):
  """By gradient: slot i's logits see u_1..u_i ("current", the reference) or only u_1..u_{i-1} (the others)."""
  cfg = tiny_config(vocab_size=64, k_max=4, hint_noise=hint_noise, noise_features="sinusoid")
  model, params = random_params(cfg, seed=5)
  tok = _tokens(1, 6, seed=3)
  u = jax.random.uniform(jax.random.key(4), (1, 6, 4))
  tau = jnp.ones((1,))
  # One jitted Jacobian of the four slots' outputs (eager per-slot grads cost a minute per layout).
  slots = lambda x: jnp.sum(model.apply(params, tok, x, tau, method=model.staircase)[0, 2] ** 2, -1)
  jac = np.asarray(jax.jit(jax.jacrev(slots))(u))  # [slot, 1, W, K]
  for i in range(4):
    g = jac[i]
    seen = np.abs(g[0, 2]) > 0
    last = i if hint_noise == "current" else i - 1
    np.testing.assert_array_equal(seen, np.arange(4) <= last)
    assert np.all(g[0, :2] == 0) and np.all(g[0, 3:] == 0)  # its own window only


def test_prefix_logits_equal_full_forward(pflm):
  model, params = pflm
  tok = _tokens(2, 7, seed=20)
  y = jax.random.randint(jax.random.key(21), (2, 7, 3), 0, 64)
  got = _apply(model, "prefix_logits", params, tok, y)
  forward = jax.jit(lambda x: model.apply(params, x))
  for t in (0, 3, 6):
    seq = jnp.concatenate([tok[:, : t + 1], y[:, t]], 1)
    np.testing.assert_allclose(got[:, t], forward(seq)[:, t:], atol=TOL)
  # The cached rollout (one new row per window) gives the same logits at every slot.
  logits, ctx_states = _apply(model, "context_states", params, tok)
  np.testing.assert_allclose(logits, got[:, :, 0], atol=TOL)
  own = None
  for j in range(1, 4):
    logits, own = _apply(model, "window_step", params, y[:, :, j - 1], ctx_states, own, j=j)
    np.testing.assert_allclose(logits, got[:, :, j], atol=TOL)


def test_ramp_features_encoder_runs_and_differs():
  cfg = tiny_config(vocab_size=64, k_max=2, hint_noise="previous", noise_features="ramp")
  model, params = random_params(cfg, seed=1)
  tok = _tokens(1, 5)
  u = jax.random.uniform(jax.random.key(2), (1, 5, 2))
  out = _apply(model, "staircase", params, tok, u, jnp.ones((1,)))
  ref = KForcingLM(cfg.replace(noise_features="sinusoid"))
  assert out.shape == (1, 5, 2, 64)
  assert not np.allclose(out, _apply(ref, "staircase", params, tok, u, jnp.ones((1,))))
