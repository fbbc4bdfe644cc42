"""Token feedback (`ModelConfig.feedback_layers`): the training staircase, teacher-forced on its own readout, equals
the decoder step by step; hint i sees the tokens of slots < i and nothing later; every decoder (push-forward scan,
verify, speculative) runs it, verify still reproduces the AR sampler, and a bad config is refused."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import random_params, tiny_config
from kforcing_jax.decoding import ar, common, pflm, verify
from kforcing_jax.distill import objectives, readout as readout_lib
from kforcing_jax.models import KForcingLM, ModelConfig, init_cache

PROMPTS = [[1, 5, 9], [7], [3, 4, 2, 8, 6, 10], [12, 13]]
N = 10


def _student(feedback_layers=1, position="rope", num_layers=3, seed=0):
  cfg = tiny_config(k_max=4, hint_noise="previous", feedback_layers=feedback_layers, position=position,
                    num_layers=num_layers)
  return cfg, random_params(cfg, seed)[1]["params"]


@pytest.mark.parametrize("feedback_layers,position", [(1, "rope"), (2, "learned"), (3, "rope")])
def test_decode_steps_equal_the_staircase_along_its_own_readout(feedback_layers, position):
  cfg, params = _student(feedback_layers, position)
  model = KForcingLM(cfg)
  b, p, k = 3, 7, 4
  tok = jax.random.randint(jax.random.key(2), (b, p), 0, cfg.vocab_size)
  tau = jnp.ones((b,))
  cache = init_cache(cfg, b, 24)
  step = jax.jit(lambda t, n, c, u: common.push_forward_step(model, params, t, n, c, u, tau, "sample"))
  own = jax.jit(lambda ctx, noise: readout_lib.own_rollout(model, params, ctx, noise, tau, "sample"))
  seq, feed, n_new = tok, tok, jnp.full((b,), p)
  for s in range(2):  # the prefill step, then a step that feeds back the previous step's tokens
    u = jax.random.uniform(jax.random.key(10 + s), (b, k))
    y, logits, _, cache = step(feed, n_new, cache, u)
    want_logits, want_y = own(seq, jnp.broadcast_to(u[:, None], seq.shape + (k,)))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want_logits[:, -1]), atol=2e-5)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(want_y[:, -1]))
    seq, feed, n_new = jnp.concatenate([seq, y], 1), y, jnp.full((b,), k)


def test_hint_i_sees_the_tokens_of_earlier_slots_only():
  cfg, params = _student(1)
  model = KForcingLM(cfg)
  b, w, k = 2, 6, 4
  ctx = jax.random.randint(jax.random.key(0), (b, w), 0, cfg.vocab_size)
  noise = jax.random.uniform(jax.random.key(1), (b, w, k))
  y = jax.random.randint(jax.random.key(3), (b, w, k), 0, cfg.vocab_size)
  fwd = jax.jit(lambda yy: model.apply({"params": params}, ctx, noise, jnp.ones((b,)), feedback_BxWxK=yy,
                                       method=model.staircase))
  base = np.asarray(fwd(y))
  for j in range(k):
    moved = np.asarray(fwd(y.at[..., j].set((y[..., j] + 1) % cfg.vocab_size)))
    diff = np.abs(moved - base).max((0, 1, 3))
    assert np.all(diff[: j + 1] == 0), (j, diff)   # slots 1..j+1 never see y_{j+1}
    if j + 1 < k:
      assert diff[j + 1] > 1e-4, (j, diff)         # slot j+2 is given it
  with pytest.raises(ValueError, match="rollout tokens"):
    model.apply({"params": params}, ctx, noise, jnp.ones((b,)), method=model.staircase)


@pytest.mark.parametrize("k,lam", [(3, None), (4, 0.5)])
def test_pflm_decoder_tokens_are_the_staircase_readout_of_its_own_output(k, lam):
  """Every step's K tokens are the own-readout staircase's tokens at that window (no penalty), and the one-jit
  decoder equals prefill + scan; with a penalty it runs and differs."""
  cfg, params = _student(1)
  model = KForcingLM(cfg)
  tok, lens = common.pad_prompts(PROMPTS)
  tok, lens = jnp.asarray(tok), jnp.asarray(lens)
  u = common.position_noise(5, len(PROMPTS), pflm.noise_length(tok.shape[1], N, k))
  got = np.asarray(pflm.decoder(cfg, k, N, lam is not None, readout="sample")(params, tok, lens, 5, 1.0,
                                                                             lam or 0.0, 0))
  if lam is not None:
    plain = np.asarray(pflm.decoder(cfg, k, N, False, readout="sample")(params, tok, lens, 5, 1.0, 0.0, 0))
    assert got.shape == plain.shape and not np.array_equal(got, plain)
    return
  # One staircase over every row (right-padded: the padding is after every window read), window t reading the
  # noises of positions t+1..t+K, as the decoder's step at that window did.
  u = np.asarray(u)
  width = max(len(p) for p in PROMPTS) + N
  seq = np.zeros((len(PROMPTS), width), np.int32)
  for b, p in enumerate(PROMPTS):
    seq[b, : len(p) + N] = p + list(got[b])
  idx = np.minimum(np.arange(width)[:, None] + 1 + np.arange(k)[None, :], u.shape[1] - 1)
  _, y = readout_lib.own_rollout(model, params, jnp.asarray(seq), jnp.asarray(u[:, idx]), jnp.ones((len(PROMPTS),)),
                                 "sample")
  for b, p in enumerate(PROMPTS):
    for start in range(0, N - k + 1, k):
      np.testing.assert_array_equal(np.asarray(y[b, len(p) - 1 + start]), got[b, start:start + k])


def test_verify_with_a_feedback_student_equals_ar():
  cfg, params = _student(1)
  t_cfg = tiny_config(k_max=0, num_layers=3)
  t_params = random_params(t_cfg, 3)[1]["params"]
  tok, lens = common.pad_prompts(PROMPTS)
  tok, lens = jnp.asarray(tok), jnp.asarray(lens)
  want = np.asarray(ar.decoder(t_cfg, N)(t_params, tok, lens, 2, 1.0, 0))
  got, passes = verify.decoder(cfg, t_cfg, 3, N, "sample")(params, t_params, tok, lens, 2, 1.0, 0)
  np.testing.assert_array_equal(np.asarray(got), want)
  assert np.all(np.asarray(passes) >= 1)


def test_feedback_objective_is_teacher_forced_on_the_targets_rollout():
  """rollout=teacher: the student's logits are those of the staircase fed the teacher's rollout tokens; the KL
  loss equals a direct computation from them."""
  cfg, params = _student(1)
  model = KForcingLM(cfg)
  t_cfg = tiny_config(k_max=0, num_layers=3)
  teacher = KForcingLM(t_cfg)
  t_params = random_params(t_cfg, 3)[1]["params"]
  tok = jax.random.randint(jax.random.key(4), (2, 12), 0, cfg.vocab_size)
  obj = objectives.Objective(k=3, loss="kl", readout="sample", rollout="teacher")
  key = jax.random.key(7)
  loss, m = objectives.pflm_loss(obj, model, params, teacher, t_params, tok, jnp.ones_like(tok), key)
  noise = jax.random.uniform(jax.random.split(key)[0], (2, 9, 3))
  from kforcing_jax.distill import targets
  y, logp = targets.ar_rollout(teacher, t_params, tok[:, :9], noise, jnp.ones((2,)))
  logits = model.apply({"params": params}, tok[:, :9], noise, jnp.ones((2,)), feedback_BxWxK=y,
                       method=model.staircase)
  kl = jnp.sum(jnp.exp(logp) * (logp - jax.nn.log_softmax(logits, -1)), -1).mean((0, 1))
  np.testing.assert_allclose([float(m[f"loss_slot{i + 1}"]) for i in range(3)], np.asarray(kl), rtol=1e-4)


def test_bad_feedback_configs_are_refused():
  with pytest.raises(ValueError, match="feedback_layers=5"):
    ModelConfig(num_layers=4, k_max=2, feedback_layers=5)
  with pytest.raises(ValueError, match="interleaved"):
    ModelConfig(k_max=2, hint_noise="interleaved", feedback_layers=1)
  cfg, params = _student(1)
  model = KForcingLM(cfg)
  with pytest.raises(ValueError, match="pick"):
    model.apply({"params": params}, jnp.ones((1, 3), jnp.int32), jnp.full((1,), 3), init_cache(cfg, 1, 16),
                jnp.full((1, 2), 0.5), jnp.ones((1,)), method=model.decode)
  with pytest.raises(ValueError, match="target_teacher=ar"):
    model.apply({"params": params}, jnp.ones((1, 3), jnp.int32), jnp.ones((1, 3, 2), jnp.int32),
                jnp.full((1, 3, 2), 0.5), jnp.ones((1,)), method=model.double_forward)
  with pytest.raises(ValueError, match="target_teacher=ar"):
    objectives.check_teacher(objectives.Objective(k=4, loss="kl"), 2, teacher_feedback=1)
  objectives.check_teacher(objectives.Objective(k=4, loss="kl"), 0, teacher_feedback=0)
