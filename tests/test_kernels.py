"""Pallas kernels (CPU interpret mode) against the XLA oracles: staircase forward + all six gradients vs the dense
mask, decode vs the XLA decode path and through the model vs `split`, a few training steps vs `split`, per-shard
runs under a mesh, TPU-semantics interpretation, lowering for tpu / cuda, bad input.

Tolerances: float32 inputs, max abs error 1e-5 on outputs and 1e-4 relative to max |grad| on gradients (the kernel
sums in a different order than one softmax over the dense mask); bfloat16 inputs, 3e-2 (outputs, values O(1)) and
5e-2 relative (gradients) against the float32 oracle on the same bf16-rounded inputs: the kernel rounds
probabilities and dS to bf16 before the matmuls, the oracle does not. Decode: 1e-5 abs; model-level logits 1e-4
abs; training losses rtol 1e-4.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental.pallas import tpu as pltpu

from helpers import random_params, tiny_config
from kforcing_jax.kernels import backend, decode, staircase
from kforcing_jax.models import KForcingLM, attention
from kforcing_jax.models.transformer import init_cache
from kforcing_jax.training import sharding


def _staircase_inputs(b, w, k, h, d, dtype, seed=0):
  keys = jax.random.split(jax.random.key(seed), 6)
  ctx = [jax.random.normal(keys[i], (b, w, h, d)).astype(dtype) for i in range(3)]
  hint = [jax.random.normal(keys[3 + i], (b, w, k, h, d)).astype(dtype) for i in range(3)]
  return ctx + hint


def _value_and_vjp(fn, args, cot):
  out, pullback = jax.vjp(fn, *args)
  return out, pullback(cot)


def _max_rel(x, ref):
  return float(jnp.max(jnp.abs(x.astype(jnp.float32) - ref)) / jnp.maximum(jnp.max(jnp.abs(ref)), 1e-6))


# (K, dtype, W, block_q, block_k): W is never a multiple of the blocks; block_q > block_k, = and < all occur;
# K in {1, 2, 4}, float32 and bfloat16 (few cases: each one compiles five interpret-mode kernels).
CASES = [
    (1, jnp.float32, 13, 8, 16),
    (4, jnp.float32, 19, 16, 8),
    (2, jnp.bfloat16, 9, 16, 16),
]


@pytest.mark.parametrize("k,dtype,w,bq,bk", CASES)
def test_staircase_matches_dense_forward_and_grads(k, dtype, w, bq, bk):
  args = _staircase_inputs(2, w, k, 2, 8, dtype)
  ckeys = jax.random.split(jax.random.key(7), 2)
  cot = (jax.random.normal(ckeys[0], (2, w, 2, 8)), jax.random.normal(ckeys[1], (2, w, k, 2, 8)))
  kernel = lambda *a: staircase.staircase_attention(*a, block_q=bq, block_k=bk)
  out, grads = jax.jit(lambda a, c: _value_and_vjp(kernel, a, c))(args, cot)
  ref_out, ref_grads = _value_and_vjp(attention.staircase_dense, [a.astype(jnp.float32) for a in args], cot)
  out_tol, grad_tol = (1e-5, 1e-4) if dtype == jnp.float32 else (3e-2, 5e-2)
  for o, r in zip(out, ref_out):
    assert o.dtype == jnp.float32 and o.shape == r.shape
    np.testing.assert_allclose(o, r, atol=out_tol)
  for g, r, a in zip(grads, ref_grads, args):
    assert g.dtype == a.dtype and g.shape == a.shape
    assert _max_rel(g, r) < grad_tol


def test_staircase_tpu_interpret_forward(monkeypatch):
  # The TPU path (Mosaic compiler params) under TPU-semantics interpretation: memory spaces, block copies.
  monkeypatch.setattr(backend, "current", lambda: "tpu")
  args = _staircase_inputs(1, 7, 2, 2, 8, jnp.float32)
  with pltpu.force_tpu_interpret_mode():
    out = staircase.staircase_attention(*args, block_q=8, block_k=8)
  for o, r in zip(out, attention.staircase_dense(*args)):
    np.testing.assert_allclose(o, r, atol=1e-5)


def test_kernels_under_mesh_run_per_shard():
  # Data x model mesh over the 8 fake CPU devices: batch split 4 ways, heads 2 ways, through shard_map.
  mesh = sharding.make_mesh((("data", 4), ("model", 2)))
  args = _staircase_inputs(4, 7, 2, 2, 8, jnp.float32)
  cot = (jnp.ones((4, 7, 2, 8)), jnp.ones((4, 7, 2, 2, 8)))
  kernel = lambda *a: staircase.staircase_attention(*a, block_q=8, block_k=8)
  with sharding.activate(mesh):
    out, grads = jax.jit(lambda a, c: _value_and_vjp(kernel, a, c))(args, cot)
    dec_args = _decode_inputs(4, 16, 2, 8, 2, 2, jnp.array([5, 12, 3, 16]))
    dec = jax.jit(decode.decode_attention, static_argnums=5)(*dec_args)
  ref_out, ref_grads = _value_and_vjp(attention.staircase_dense, args, cot)
  for x, r in zip(list(out) + list(grads), list(ref_out) + list(ref_grads)):
    np.testing.assert_allclose(x, r, atol=1e-4)
  np.testing.assert_allclose(dec, attention.decode_attention(*dec_args), atol=1e-5)


def _decode_inputs(b, s, h, d, n_ctx, k, kv_len, seed=0):
  keys = jax.random.split(jax.random.key(seed), 5)
  caches = [jax.random.normal(keys[i], (b, h, s, d)) for i in range(2)]
  q = jax.random.normal(keys[2], (b, n_ctx + k, h, d))
  # Rows start at different offsets, so some context queries sit past kv_len (padding of a ragged batch).
  start = kv_len - n_ctx + jnp.arange(b) % 2
  pos = start[:, None] + jnp.arange(n_ctx)[None, :]
  kh = vh = None
  if k:
    pos = jnp.concatenate([pos, kv_len[:, None] - 1 + jnp.arange(1, k + 1)[None, :]], 1)
    kh, vh = (jax.random.normal(keys[3 + i], (b, k, h, d)) for i in range(2))
  return q, pos, caches[0], caches[1], kv_len, n_ctx, kh, vh


@pytest.mark.parametrize("n_ctx,k", [(4, 4), (1, 0)])
def test_decode_matches_xla(n_ctx, k):
  args = _decode_inputs(3, 40, 2, 8, n_ctx, k, jnp.array([5, 17, 38]))
  out = jax.jit(decode.decode_attention, static_argnums=5)(*args)
  np.testing.assert_allclose(out, attention.decode_attention(*args), atol=1e-5)


def _tiny_pflm(impl="split"):
  return tiny_config(attention_impl=impl, block_q=8, block_k=8, k_max=2, num_layers=1)


@functools.lru_cache(maxsize=1)
def _init_params(cfg):
  # Shared by every impl and test; jitted once because eager init would dominate the tests' time.
  return jax.jit(lambda: random_params(cfg, seed=3)[1])()


def test_model_decode_with_pallas_matches_split():
  # Two ragged push-forward steps through the model (cache writes, growing lengths) with either attention impl.
  cfg = _tiny_pflm()
  params = _init_params(cfg)
  tok = jax.random.randint(jax.random.key(0), (2, 5), 0, cfg.vocab_size)
  noises = jax.random.uniform(jax.random.key(1), (2, 2, 2))
  outs = {}
  for impl in ("split", "pallas"):
    model = KForcingLM(cfg.replace(attention_impl=impl))
    step = jax.jit(lambda p, n, c, u: model.apply(p, tok, n, c, u, jnp.ones((2,)), ctx_logits="last",
                                                   method=model.decode))
    ctx1, hint1, cache = step(params, jnp.array([5, 3]), init_cache(cfg, 2, 24), noises[0])
    ctx2, hint2, _ = step(params, jnp.array([2, 4]), cache, noises[1])
    outs[impl] = (ctx1, hint1, ctx2, hint2)
  for x, r in zip(outs["pallas"], outs["split"]):
    np.testing.assert_allclose(x, r, atol=1e-4)


def test_decode_tpu_interpret(monkeypatch):
  # Exercises the TPU-only pieces (kv_len in SMEM, Mosaic params) with TPU semantics.
  monkeypatch.setattr(backend, "current", lambda: "tpu")
  args = _decode_inputs(2, 16, 2, 8, 2, 2, jnp.array([5, 12]))
  with pltpu.force_tpu_interpret_mode():
    out = decode.decode_attention(*args)
  np.testing.assert_allclose(out, attention.decode_attention(*args), atol=1e-5)


def _loss_curve(impl, steps=3):
  cfg = _tiny_pflm(impl)
  params = _init_params(_tiny_pflm())
  model = KForcingLM(cfg)
  keys = jax.random.split(jax.random.key(11), 3)
  b, w, k = 2, 13, 2
  ctx = jax.random.randint(keys[0], (b, w), 0, cfg.vocab_size)
  noise = jax.random.uniform(keys[1], (b, w, k))
  targets = jax.random.randint(keys[2], (b, w, k), 0, cfg.vocab_size)
  tau = jnp.ones((b,))
  opt = optax.adam(1e-2)

  def loss_fn(p):
    logits = model.apply(p, ctx, noise, tau, method=model.staircase)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

  @jax.jit
  def step(p, s):
    loss, g = jax.value_and_grad(loss_fn)(p)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss

  state, losses = opt.init(params), []
  for _ in range(steps):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return np.array(losses)


def test_training_with_pallas_matches_split():
  pallas, split = _loss_curve("pallas"), _loss_curve("split")
  assert pallas[-1] < pallas[0]  # it trains at all
  np.testing.assert_allclose(pallas, split, rtol=1e-4)


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_kernels_lower_for_accelerators(monkeypatch, platform):
  # Cross-platform export runs Pallas' Mosaic / Triton lowering rules here on CPU (not the device compilers that
  # follow, which need the hardware): unsupported ops or block shapes in the kernels fail at this step.
  monkeypatch.setattr(backend, "current", lambda: "tpu" if platform == "tpu" else "gpu")
  ctx, hint = (2, 50, 2, 64), (2, 50, 4, 2, 64)
  stair = _specs(ctx, ctx, ctx, hint, hint, hint, dtype=jnp.bfloat16)
  attend = lambda *a: staircase.staircase_attention(*a, block_q=32, block_k=16)
  fwd_bwd = jax.value_and_grad(lambda *a: sum(jnp.sum(o) for o in attend(*a)), argnums=tuple(range(6)))
  q, cache, kh = _specs((2, 8, 2, 64), (2, 2, 64, 64), (2, 4, 2, 64), dtype=jnp.bfloat16)
  ints = [jax.ShapeDtypeStruct((2, 8), jnp.int32), jax.ShapeDtypeStruct((2,), jnp.int32)]
  dec = lambda q, pos, kc, vc, kv_len, kh, vh: decode.decode_attention(q, pos, kc, vc, kv_len, 4, kh, vh)
  export_for = functools.partial(jax.export.export, platforms=[platform], disabled_checks=[
      jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])
  export_for(jax.jit(fwd_bwd))(*stair)
  export_for(jax.jit(dec))(q, ints[0], cache, cache, ints[1], kh, kh)


def _specs(*shapes, dtype=jnp.float32):
  return [jax.ShapeDtypeStruct(shape, dtype) for shape in shapes]


def _raises(fn, args, match, **kw):
  # eval_shape: the error must come at trace time, before anything runs.
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(lambda *a: fn(*a, **kw), *args)


def test_bad_inputs_raise(monkeypatch):
  ctx, hint = (1, 5, 2, 8), (1, 5, 2, 2, 8)
  stair = _specs(ctx, ctx, ctx, hint, hint, hint)
  attend = staircase.staircase_attention
  _raises(attend, stair, "block_q=12", block_q=12, block_k=8)
  _raises(attend, stair, "block_k=4", block_q=8, block_k=4)
  hint16, hint3 = (1, 5, 16, 2, 8), (1, 5, 3, 2, 8)
  _raises(attend, _specs(ctx, ctx, ctx, hint16, hint16, hint16), "K=16", block_q=16, block_k=8)
  _raises(attend, _specs(ctx, ctx, ctx, hint3, hint3, hint3), "K=3", block_q=8, block_k=8)
  _raises(attend, _specs(ctx, ctx, ctx, hint, hint, (1, 5, 1, 2, 8)), "hint q/k/v", block_q=8, block_k=8)
  _raises(attend, _specs((1, 4, 2, 8), ctx, ctx, hint, hint, hint), "context q/k/v", block_q=8, block_k=8)
  mixed = stair[:3] + _specs(hint, dtype=jnp.bfloat16) + stair[4:]
  _raises(attend, mixed, "float32 or all bfloat16", block_q=8, block_k=8)
  q, cache, kh = (2, 4, 2, 8), (2, 2, 16, 8), (2, 2, 2, 8)
  pos_len = [jax.ShapeDtypeStruct((2, 4), jnp.int32), jax.ShapeDtypeStruct((2,), jnp.int32)]
  dec = lambda q, pos, kc, vc, kv_len, kh, vh, n_ctx=2: decode.decode_attention(q, pos, kc, vc, kv_len, n_ctx, kh, vh)
  _raises(dec, _specs(q, (2, 2, 44, 8))[:1] + pos_len[:1] + _specs((2, 2, 44, 8), (2, 2, 44, 8)) + pos_len[1:]
          + _specs(kh, kh), "multiple of 8")
  good = _specs(q)[:1] + pos_len[:1] + _specs(cache, cache) + pos_len[1:] + _specs(kh, kh)
  _raises(dec, good, "n_ctx=3", n_ctx=3)
  _raises(lambda *a: dec(*a[:6], None), good, "both")
  monkeypatch.setattr(jax, "default_backend", lambda: "metal")
  _raises(attend, stair, "backends", block_q=8, block_k=8)
  _raises(dec, good, "backends")
