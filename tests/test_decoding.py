"""Decoders: scan == Python loop, AR == inverse CDF of full-forward logits, push-forward step == staircase,
verify == AR token for token on ragged batches, EOS padding and frequency-penalty semantics."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_params, tiny_config
from kforcing_jax.decoding import ar, common, pflm, verify
from kforcing_jax.distill import inverse_cdf
from kforcing_jax.models import KForcingLM, init_cache

N = 11
PROMPTS = [[1, 5, 9], [7], [3, 4, 2, 8, 6, 10], [12, 13]]


@pytest.fixture(scope="module")
def student():
  cfg = tiny_config(k_max=4)
  return cfg, random_params(cfg, 0)[1]["params"]


@pytest.fixture(scope="module")
def teacher():
  cfg = tiny_config(k_max=0)
  return cfg, random_params(cfg, 3)[1]["params"]


def _batch(width=None):
  tok, lens = common.pad_prompts(PROMPTS)
  return jnp.asarray(tok), jnp.asarray(lens)


@functools.lru_cache(maxsize=None)
def _jit_decode(cfg, ctx_logits):
  model = KForcingLM(cfg)
  return jax.jit(lambda p, tok, n, cache, noise, tau: model.apply(
      {"params": p}, tok, n, cache, noise, tau, ctx_logits=ctx_logits, method=model.decode))


def _first(cfg, params, p, size, noise=None, tau=None, ctx_logits="none"):
  """One row's prompt, padded to width 8 (one compile for every prompt length), into a fresh cache."""
  tok = jnp.zeros((1, 8), jnp.int32).at[0, :len(p)].set(jnp.asarray(p, jnp.int32))
  return _jit_decode(cfg, ctx_logits)(params, tok, jnp.asarray([len(p)]), init_cache(cfg, 1, size), noise, tau)


def _ar_loop(cfg, params, prompts, u, n):
  """Reference: one row at a time, one decode call per token, sampling on the host side of the loop."""
  out, u = [], np.asarray(u)
  for b, p in enumerate(prompts):
    logits, _, cache = _first(cfg, params, p, 8 + n, ctx_logits="last")
    toks = []
    for _ in range(n):
      pos = int(cache["len"][0])
      toks.append(int(inverse_cdf.sample(logits, u[b:b + 1, pos])[0]))
      tok = jnp.asarray([[toks[-1]]], jnp.int32)
      logits, _, cache = _jit_decode(cfg, "last")(params, tok, jnp.ones((1,), jnp.int32), cache, None, None)
    out.append(toks)
  return np.array(out)


def _pflm_loop(cfg, params, prompts, u, n, k, lam=None, readout="argmax"):
  out, u = [], np.asarray(u)  # numpy slices: eager jax slices would compile once per offset
  tau = jnp.ones((1,))
  for b, p in enumerate(prompts):
    counts = None if lam is None else np.zeros(cfg.vocab_size)
    pos0 = len(p)
    _, hl, cache = _first(cfg, params, p, 8 + n + 2 * k, u[b:b + 1, pos0:pos0 + k], tau)
    toks = []
    while True:
      hl = np.asarray(hl)
      for i in range(k):
        lg = hl[0, i] - (0.0 if counts is None else lam * counts)
        if readout == "sample":
          toks.append(int(inverse_cdf.sample(jnp.asarray(lg), jnp.asarray(u[b, pos0 + i]))))
        else:
          toks.append(int(np.argmax(lg)))
        if counts is not None:
          counts[toks[-1]] += 1
      if len(toks) >= n:
        break
      pos0 = int(cache["len"][0]) + k
      _, hl, cache = _jit_decode(cfg, "none")(params, jnp.asarray([toks[-k:]], jnp.int32), jnp.full((1,), k),
                                              cache, u[b:b + 1, pos0:pos0 + k], tau)
    out.append(toks[:n])
  return np.array(out)


def test_position_noise_depends_only_on_row_and_position():
  a = common.position_noise(7, 4, 20)
  b = common.position_noise(7, 2, 30, row_offset=2)
  np.testing.assert_array_equal(a[2:], b[:, :20])
  assert float(a.min()) >= 0.0 and float(a.max()) < 1.0
  assert not np.allclose(a, common.position_noise(8, 4, 20))


def test_ar_scan_equals_python_loop(teacher):
  cfg, params = teacher
  tok, lens = _batch()
  u = common.position_noise(0, len(PROMPTS), ar.noise_length(tok.shape[1], N))
  cache, first = ar.prefill(cfg, params, tok, lens, u, 1.0, num_tokens=N)
  got, _ = ar.steps(cfg, params, cache, first, u, 1.0, num_tokens=N)
  np.testing.assert_array_equal(np.asarray(got), _ar_loop(cfg, params, PROMPTS, u, N))
  # The one-jit decoder draws the same noise from the seed.
  np.testing.assert_array_equal(np.asarray(ar.decoder(cfg, N)(params, tok, lens, 0, 1.0, 0)), np.asarray(got))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_ar_equals_inverse_cdf_of_full_forward(teacher, temperature):
  cfg, params = teacher
  tok, lens = _batch()
  gen = np.asarray(ar.decoder(cfg, N)(params, tok, lens, 5, temperature, 0))
  u = common.position_noise(5, len(PROMPTS), ar.noise_length(tok.shape[1], N))
  model = KForcingLM(cfg)
  forward = jax.jit(lambda x: model.apply({"params": params}, x))
  for b, p in enumerate(PROMPTS):
    seq = jnp.zeros((1, 24), jnp.int32).at[0, :len(p) + N].set(jnp.asarray(p + list(gen[b]), jnp.int32))
    logits = forward(seq)[0]  # causal: the padding after the sequence changes nothing
    pos = jnp.arange(len(p), len(p) + N)
    want = inverse_cdf.sample(logits[pos - 1], u[b, pos], temperature)
    np.testing.assert_array_equal(gen[b], np.asarray(want))


def test_ar_samplers_run(teacher):
  cfg, params = teacher
  tok, lens = _batch()
  greedy = np.asarray(ar.decoder(cfg, N, "greedy")(params, tok, lens, 0, 1.0, 0))
  model = KForcingLM(cfg)
  seq = jnp.asarray([PROMPTS[0] + list(greedy[0])], jnp.int32)
  logits = model.apply({"params": params}, seq)[0]
  np.testing.assert_array_equal(greedy[0], np.argmax(logits[len(PROMPTS[0]) - 1:-1], -1))
  vc = np.asarray(ar.decoder(cfg, N, "vocab_cdf")(params, tok, lens, 0, 1.0, 0))
  assert vc.shape == (len(PROMPTS), N) and vc.min() >= 0 and vc.max() < cfg.vocab_size


@pytest.mark.parametrize("k,lam,readout", [(1, None, "argmax"), (3, 0.7, "argmax"), (4, 0.5, "sample")])
def test_pflm_scan_equals_python_loop(student, k, lam, readout):
  cfg, params = student
  tok, lens = _batch()
  u = common.position_noise(1, len(PROMPTS), pflm.noise_length(tok.shape[1], N, k))
  penalize = lam is not None
  state = pflm.prefill(cfg, params, tok, lens, u, 1.0, lam or 0.0, k=k, num_tokens=N, penalize=penalize,
                       readout=readout)
  got, _ = pflm.steps(cfg, params, state, u, 1.0, lam or 0.0, k=k, num_tokens=N, readout=readout)
  np.testing.assert_array_equal(np.asarray(got), _pflm_loop(cfg, params, PROMPTS, u, N, k, lam, readout))
  one_jit = pflm.decoder(cfg, k, N, penalize, readout=readout)(params, tok, lens, 1, 1.0, lam or 0.0, 0)
  np.testing.assert_array_equal(np.asarray(one_jit), np.asarray(got))


def test_sampled_readout_at_k1_is_ar_inverse_cdf_sampling_of_the_hint_logits():
  """K = 1, "previous" layout: hint 1 sees no noise, so each token is the AR inverse-CDF sample (`ar.sample_token`,
  the AR decoder's sampler) of that step's hint logits at the position's u."""
  cfg = tiny_config(k_max=1, hint_noise="previous")
  params = random_params(cfg, 6)[1]["params"]
  tok, lens = _batch()
  u = common.position_noise(3, len(PROMPTS), pflm.noise_length(tok.shape[1], N, 1))
  got = np.asarray(pflm.decoder(cfg, 1, N, readout="sample")(params, tok, lens, 3, 1.0, 0.0, 0))
  model = KForcingLM(cfg)
  stair = jax.jit(lambda x: model.apply({"params": params}, x, jnp.zeros(x.shape + (1,)), jnp.ones((1,)),
                                        method=model.staircase))
  for b, p in enumerate(PROMPTS):
    seq = jnp.asarray([p + list(got[b])], jnp.int32)
    logits = stair(seq)[0, len(p) - 1: len(p) - 1 + N, 0]  # window t predicts position t+1; u is not read
    pos = jnp.arange(len(p), len(p) + N)
    np.testing.assert_array_equal(got[b], np.asarray(ar.sample_token(logits, u[b, pos], 1.0, "icdf")))


def test_pflm_decode_step_equals_staircase(student):
  cfg, params = student
  model = KForcingLM(cfg)
  k, w = 3, 9
  x = jax.random.randint(jax.random.key(0), (1, w), 0, cfg.vocab_size)
  noise = jax.random.uniform(jax.random.key(1), (1, w, k))
  tau = jnp.full((1,), 0.8)
  stair = jax.jit(lambda *a: model.apply({"params": params}, *a, method=model.staircase))(x, noise, tau)
  step = _jit_decode(cfg, "none")
  for t in (0, 4, w - 1):
    ctx = jnp.zeros((1, 12), jnp.int32).at[:, : t + 1].set(x[:, : t + 1])
    _, hl, _ = step(params, ctx, jnp.asarray([t + 1]), init_cache(cfg, 1, 16), noise[:, t], tau)
    np.testing.assert_allclose(hl[0], stair[0, t], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("k,readout", [(1, "argmax"), (2, "argmax"), (4, "argmax"), (3, "sample")])
def test_verify_equals_ar_for_every_row(student, teacher, k, readout):
  (s_cfg, s_params), (t_cfg, t_params) = student, teacher
  tok, lens = _batch()
  want = np.asarray(ar.decoder(t_cfg, N)(t_params, tok, lens, 2, 1.0, 0))
  got, passes = verify.decoder(s_cfg, t_cfg, k, N, readout)(s_params, t_params, tok, lens, 2, 1.0, 0)
  np.testing.assert_array_equal(np.asarray(got), want)
  assert np.all(np.asarray(passes) >= 1) and np.all(np.asarray(passes) <= N)


@pytest.mark.parametrize("k", [2, 4])
def test_verify_accepts_agreeing_drafts(student, teacher, monkeypatch, k):
  """Oracle drafts (the AR tokens, corrupted at some positions in odd rows) exercise partial acceptance."""
  (s_cfg, s_params), (t_cfg, t_params) = student, teacher
  tok, lens = _batch()
  ar_tok = np.asarray(ar.decoder(t_cfg, N)(t_params, tok, lens, 4, 1.0, 0))
  width = verify.noise_length(tok.shape[1], N, k)
  ref = np.zeros((len(PROMPTS), width), np.int32)
  for b, p in enumerate(PROMPTS):
    ref[b, len(p):len(p) + N] = ar_tok[b]
  ref = jnp.asarray(ref)
  original = verify._draft

  def oracle(student_, s_params_, tok_BxT, n_new_B, cache, u_BxS, tau_B, k_, *rest):
    _, cache = original(student_, s_params_, tok_BxT, n_new_B, cache, u_BxS, tau_B, k_, *rest)
    pos = (cache["len"])[:, None] + jnp.arange(k_)[None, :]
    d = jnp.take_along_axis(ref, jnp.clip(pos, 0, width - 1), 1)
    odd = (jnp.arange(d.shape[0]) % 2 == 1)[:, None]
    return jnp.where(odd & (pos % 2 == 0), (d + 1) % s_cfg.vocab_size, d), cache

  monkeypatch.setattr(verify, "_draft", oracle)
  verify.decoder.cache_clear()
  try:
    got, passes = verify.decoder(s_cfg, t_cfg, k, N)(s_params, t_params, tok, lens, 4, 1.0, 0)
  finally:
    verify.decoder.cache_clear()
  np.testing.assert_array_equal(np.asarray(got), ar_tok)
  passes = np.asarray(passes)
  # Even rows get perfect drafts: K accepted + 1 bonus per teacher pass.
  np.testing.assert_array_equal(passes[::2], -(-N // (k + 1)))
  assert np.all(passes[1::2] > passes[::2]) and np.all(passes[1::2] < N)


def test_truncate_at_eos():
  tok = jnp.asarray([[5, 2, 9, 2], [1, 3, 4, 6], [2, 7, 7, 7]])
  out, length = common.truncate_at_eos(tok, eos_id=2, pad_id=0)
  np.testing.assert_array_equal(np.asarray(out), [[5, 0, 0, 0], [1, 3, 4, 6], [0, 0, 0, 0]])
  np.testing.assert_array_equal(np.asarray(length), [1, 4, 0])
  same, full = common.truncate_at_eos(tok, eos_id=-1, pad_id=0)
  np.testing.assert_array_equal(np.asarray(same), np.asarray(tok))
  np.testing.assert_array_equal(np.asarray(full), [4, 4, 4])


def test_frequency_penalty_is_sequential_and_persistent():
  # Token 3 wins every slot without a penalty; with lam = 1 it is penalised from the second slot on.
  logits = jnp.asarray([[[0.0, 0.0, 0.5, 2.0], [0.0, 0.0, 0.5, 2.0], [0.0, 0.0, 1.9, 2.0]]])
  y, _ = common.readout(logits, None, 0.0)
  np.testing.assert_array_equal(np.asarray(y), [[3, 3, 3]])
  y, counts = common.readout(logits, jnp.zeros((1, 4)), 1.0)
  # slot 1: 3 (count 0); slot 2: 2.0-1=1.0 > 0.5 -> 3 again; slot 3: 2.0-2=0 < 1.9 -> 2.
  np.testing.assert_array_equal(np.asarray(y), [[3, 3, 2]])
  np.testing.assert_array_equal(np.asarray(counts), [[0, 0, 1, 2]])
  y2, counts2 = common.readout(jnp.asarray([[[0.0, 0.0, 1.6, 2.0]]]), counts, 1.0)  # counts persist across steps
  np.testing.assert_array_equal(np.asarray(y2), [[2]])
  np.testing.assert_array_equal(np.asarray(counts2), [[0, 0, 2, 2]])


def test_check_request_rejects_bad_input(student, teacher):
  cfg = student[0]
  ok = dict(prompt_lens=[3], num_tokens=4, k=2, temperature=1.0)
  common.check_request(cfg, **ok)
  bad = [dict(k=5), dict(k=0), dict(temperature=0.0), dict(temperature=float("nan")), dict(prompt_lens=[]),
         dict(prompt_lens=[0]), dict(prompt_lens=[cfg.max_len - 2], num_tokens=4), dict(num_tokens=0)]
  for b in bad:
    with pytest.raises(ValueError):
      common.check_request(cfg, **{**ok, **b})
  with pytest.raises(ValueError):
    common.check_request(teacher[0], [3], 4, k=1)
