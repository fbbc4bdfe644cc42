"""Speculative decoding is exact: its output distribution equals the teacher's joint (chi-square over many seeds),
and a deliberately broken variant (no residual redraw after a rejection) fails the same test."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from helpers import random_params, tiny_config
from kforcing_jax.decoding import common, speculative
from kforcing_jax.models import KForcingLM

V, PROMPT, N, ROWS = 6, [1, 2, 3], 3, 24000


def _models(hint_noise, feedback_layers=0):
  t_cfg = tiny_config(vocab_size=V, k_max=0, max_len=16)
  s_cfg = tiny_config(vocab_size=V, k_max=3, max_len=16, hint_noise=hint_noise, feedback_layers=feedback_layers)
  return (t_cfg, random_params(t_cfg, 3, scale=0.5)[1]["params"]), (s_cfg, random_params(s_cfg, 4)[1]["params"])


def _exact_joint(t_cfg, t_params, temperature):
  """log p(y1 y2 y3 | prompt) for every continuation, from full forwards of all V^3 sequences."""
  conts = np.array(list(itertools.product(range(V), repeat=N)), np.int32)
  seq = jnp.asarray(np.concatenate([np.tile(PROMPT, (len(conts), 1)), conts], 1))
  model = KForcingLM(t_cfg)
  logp = jax.nn.log_softmax(model.apply({"params": t_params}, seq) / temperature, -1)
  p0 = len(PROMPT)
  lp = sum(logp[np.arange(len(conts)), p0 - 1 + i, conts[:, i]] for i in range(N))
  return conts, np.exp(np.asarray(lp, np.float64))


def _chi2_pvalue(tokens, conts, probs):
  # itertools.product enumerates continuations in base-V order.
  index = tokens.astype(np.int64) @ (V ** np.arange(N - 1, -1, -1))
  counts = np.bincount(index, minlength=len(conts)).astype(np.float64)
  expected = probs / probs.sum() * len(tokens)
  small = expected < 5  # cells too rare for the chi-square approximation are pooled into one
  obs = np.append(counts[~small], counts[small].sum())
  exp = np.append(expected[~small], expected[small].sum())
  return stats.chisquare(obs, exp).pvalue


def _sample(decoder, student, teacher, k, temperature):
  (s_cfg, s_params), (t_cfg, t_params) = student, teacher
  tok, lens = common.pad_prompts([PROMPT] * ROWS)
  out, passes, accepted = decoder(s_params, t_params, jnp.asarray(tok), jnp.asarray(lens), 11, temperature, 0)
  return np.asarray(out), np.asarray(passes), np.asarray(accepted)


@pytest.mark.parametrize("hint_noise,k,temperature,feedback", [("previous", 2, 1.0, 0), ("current", 3, 0.8, 0),
                                                                ("previous", 3, 1.0, 1)])
def test_speculative_output_has_the_teachers_distribution(hint_noise, k, temperature, feedback):
  teacher, student = _models(hint_noise, feedback)
  conts, probs = _exact_joint(*teacher, temperature)
  out, passes, accepted = _sample(speculative.decoder(student[0], teacher[0], k, N), student, teacher, k, temperature)
  assert _chi2_pvalue(out, conts, probs) > 1e-3
  # Some drafts are accepted and some rejected (the test exercises both branches).
  assert 0 < accepted.mean() < k and np.all(passes >= 1)
  np.testing.assert_array_equal(passes * 1 + accepted >= N, True)


def test_speculative_without_residual_redraw_is_detected(monkeypatch):
  teacher, student = _models("previous")
  conts, probs = _exact_joint(*teacher, 1.0)
  monkeypatch.setattr(speculative, "residual", lambda p, q: p)  # redraw from p: biased towards the drafts
  broken = speculative.decoder.__wrapped__(student[0], teacher[0], 2, N)
  out, _, _ = _sample(broken, student, teacher, 2, 1.0)
  assert _chi2_pvalue(out, conts, probs) < 1e-6
