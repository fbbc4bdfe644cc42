"""Exact lossless decoding by speculative (rejection) sampling: push-forward drafts, one teacher pass per iteration.

Per iteration and row (Leviathan et al. 2023; Chen et al. 2023): the student drafts d_1..d_K for positions
p..p+K-1 in one cached step, each d_i a draw from its hint's softmax q_i (`readout` "sample"); the teacher scores
[last accepted token, d_1..d_K] in one cached pass, giving p_1..p_{K+1} (p_i = p(. | prefix, d_<i) at the
temperature). Draft i is accepted when r_i < p_i(d_i) / q_i(d_i), with r_i uniform and independent of the draft;
at the first rejection, slot i is redrawn from normalize(max(0, p_i - q_i)); when all K are accepted, one more
token comes from p_{K+1}. Each emitted token is then distributed as the teacher's conditional given the tokens
before it, so the output has exactly the teacher's distribution, however good or bad the student is; the student
only sets the acceptance rate (1 - TV(p_i, q_i) per slot).

This needs q_i to be fixed before d_i is drawn. With `ModelConfig.hint_noise` "previous" or "interleaved", slot i's
hint never sees u_i, so d_i = inverse CDF of q_i at u_i (the student's own sampled readout). With the reference layout ("current")
hint i encodes u_i itself, so d_i is drawn at an independent uniform instead (exact, but the student then drafts
with noise it was not trained on).

Noise: every stream is indexed by absolute position (`common.position_noise`): u (stream 0, the hints), r
(stream 1, acceptance), w (stream 2, residual / bonus draws), and stream 3 for the drafts of a "current"-layout
student. A rejected position's later noises were never part of any decision that was kept, so they are reused
by the next iteration without bias. Ragged acceptance uses the positions / cache lengths of `verify`.
"""
import functools

import jax
import jax.numpy as jnp

from kforcing_jax.decoding.common import gather_positions, position_noise, push_forward_step
from kforcing_jax.decoding.verify import cache_size, commit, noise_length, score_drafts
from kforcing_jax.distill import inverse_cdf
from kforcing_jax.models.config import ModelConfig
from kforcing_jax.models.transformer import KForcingLM, init_cache

ACCEPT, RESIDUAL, DRAFT = 1, 2, 3  # noise streams


def residual(p_BxV, q_BxV):
  """The distribution a rejected slot is redrawn from: normalize(max(0, p - q)) (p itself if that is all zero)."""
  r = jnp.maximum(p_BxV - q_BxV, 0.0)
  total = jnp.sum(r, -1, keepdims=True)
  return jnp.where(total > 0, r / jnp.where(total > 0, total, 1.0), p_BxV)


def draw(probs_BxV, w_B):
  """An exact draw from `probs` at uniform w: the vocabulary-order inverse CDF (no sort; never a zero-mass token)."""
  cdf = jnp.cumsum(probs_BxV, -1)
  rank = jnp.sum(cdf <= w_B[:, None] * cdf[:, -1:], -1)
  v = probs_BxV.shape[-1]
  last = v - 1 - jnp.argmax(jnp.flip(probs_BxV > 0, -1), -1)
  return jnp.minimum(rank, last).astype(jnp.int32)


def _draft(student, s_params, tok_BxT, n_new_B, cache, u_BxS, ud_BxS, tau_B, k):
  pos = (cache["len"] + n_new_B)[:, None] + jnp.arange(k)[None, :]
  drafts, q_logits, _, cache = push_forward_step(student, s_params, tok_BxT, n_new_B, cache,
                                                 gather_positions(u_BxS, pos), tau_B, "sample",
                                                 u_read_BxK=gather_positions(ud_BxS, pos))
  return drafts, q_logits, cache


def _noises(s_cfg, seed, b, width, num_tokens, k, row_offset):
  n = noise_length(width, num_tokens, k)
  u = position_noise(seed, b, n, row_offset)
  ud = u if s_cfg.hint_noise != "current" else position_noise(seed, b, n, row_offset, DRAFT)
  return u, ud, position_noise(seed, b, n, row_offset, ACCEPT), position_noise(seed, b, n, row_offset, RESIDUAL)


def prefill(s_cfg: ModelConfig, s_params, t_cfg: ModelConfig, t_params, prompt_BxP, plen_B, noises, temperature, *,
            k: int, num_tokens: int):
  """Prompts into both caches (the teacher's without the last prompt token) and the first drafts.

  Args:
    s_cfg, s_params: the push-forward student (drafts).
    t_cfg, t_params: the AR teacher (any model's AR path).
    prompt_BxP: right-padded prompts; plen_B their lengths (>= 1).
    noises: (u, draft, accept, residual) uniforms by absolute position, each [B, S] (`_noises`).
    temperature: the teacher's softmax temperature, also fed to the student's noise encoder as tau.
    k: drafts per iteration.
    num_tokens: new tokens per row.
  Returns:
    The loop state (dict).
  """
  student, teacher = KForcingLM(s_cfg), KForcingLM(t_cfg)
  b, p = prompt_BxP.shape
  size = cache_size(p, num_tokens, k)
  tau = jnp.full((b,), temperature, jnp.float32)
  drafts, q_logits, cs = _draft(student, s_params, prompt_BxP, plen_B, init_cache(s_cfg, b, size), noises[0],
                                noises[1], tau, k)
  _, _, ct = teacher.apply({"params": t_params}, prompt_BxP, plen_B - 1, init_cache(t_cfg, b, size),
                           method=teacher.decode)
  last = jnp.take_along_axis(prompt_BxP, (plen_B - 1)[:, None], 1)[:, 0]
  zeros = jnp.zeros((b,), jnp.int32)
  return {"cs": cs, "ct": ct, "drafts": drafts, "q_logits": q_logits, "last": last,
          "out": jnp.zeros((b, num_tokens + k + 1), jnp.int32), "n_acc": zeros, "iters": zeros, "accepted": zeros}


def _verify(logits_BxK1xV, q_logits_BxKxV, drafts_BxK, r_BxK, w_BxK1, temperature):
  """(tokens t [B, K+1] whose first m+1 are emitted, m = accepted drafts [B])."""
  b, k = drafts_BxK.shape
  logp = jax.nn.log_softmax(logits_BxK1xV.astype(jnp.float32) / temperature, -1)
  logq = jax.nn.log_softmax(q_logits_BxKxV, -1)
  lp_d = jnp.take_along_axis(logp[:, :k], drafts_BxK[..., None], -1)[..., 0]
  lq_d = jnp.take_along_axis(logq, drafts_BxK[..., None], -1)[..., 0]
  accept = jnp.log(r_BxK) < lp_d - lq_d
  m = jnp.sum(jnp.cumprod(accept.astype(jnp.int32), 1), 1)
  # Slot m: the residual of p_m - q_m after a rejection, p_{K+1} itself after K acceptances (q of slot K+1 = 0).
  q = jnp.concatenate([jnp.exp(logq), jnp.zeros_like(logq[:, :1])], 1)
  pick = lambda x: jnp.take_along_axis(x, m[:, None, None], 1)[:, 0]
  x = draw(residual(pick(jnp.exp(logp)), pick(q)), jnp.take_along_axis(w_BxK1, m[:, None], 1)[:, 0])
  padded = jnp.concatenate([drafts_BxK, jnp.zeros((b, 1), jnp.int32)], 1)
  t = jnp.where(jnp.arange(k + 1)[None, :] < m[:, None], padded, x[:, None])
  return t, m


def loop(s_cfg: ModelConfig, s_params, t_cfg: ModelConfig, t_params, state, noises, temperature, *, k: int,
         num_tokens: int):
  """Draft-score-accept iterations as one `lax.while_loop` until every row has num_tokens tokens.

  Returns:
    (int32 tokens [B, num_tokens], int32 teacher passes per row [B] (excluding the prefill),
     int32 accepted drafts per row [B], final state).
  """
  student, teacher = KForcingLM(s_cfg), KForcingLM(t_cfg)
  u, ud, r_all, w_all = noises
  b = state["last"].shape[0]
  tau = jnp.full((b,), temperature, jnp.float32)

  def body(s):
    logits, ct, pos = score_drafts(teacher, t_params, s, k)
    t, m = _verify(logits, s["q_logits"], s["drafts"], gather_positions(r_all, pos[:, :k]),
                   gather_positions(w_all, pos), temperature)
    active, n_new, kept = commit(s, ct, t, m, num_tokens)
    drafts, q_logits, cs = _draft(student, s_params, t, n_new, s["cs"], u, ud, tau, k)
    return {**kept, "cs": cs, "drafts": drafts, "q_logits": q_logits, "iters": s["iters"] + active.astype(jnp.int32),
            "accepted": s["accepted"] + jnp.where(active, m, 0)}

  s = jax.lax.while_loop(lambda s: jnp.any(s["n_acc"] < num_tokens), body, state)
  return s["out"][:, :num_tokens], s["iters"], s["accepted"], s


@functools.lru_cache(maxsize=32)
def decoder(s_cfg: ModelConfig, t_cfg: ModelConfig, k: int, num_tokens: int):
  """One jitted speculative decoder per (student, teacher, K, num_tokens); retraces per (batch, width).

  Returns:
    fn(s_params, t_params, prompt_BxP, plen_B, seed, temperature, row_offset)
      -> (tokens [B, num_tokens], teacher passes [B], accepted drafts [B]).
  """
  def run(s_params, t_params, prompt_BxP, plen_B, seed, temperature, row_offset):
    b, p = prompt_BxP.shape
    noises = _noises(s_cfg, seed, b, p, num_tokens, k, row_offset)
    state = prefill(s_cfg, s_params, t_cfg, t_params, prompt_BxP, plen_B, noises, temperature, k=k,
                    num_tokens=num_tokens)
    return loop(s_cfg, s_params, t_cfg, t_params, state, noises, temperature, k=k, num_tokens=num_tokens)[:3]

  return jax.jit(run)


@functools.lru_cache(maxsize=32)
def phases(s_cfg: ModelConfig, t_cfg: ModelConfig, k: int, num_tokens: int):
  """Prefill and loop as two jitted functions (the state is donated to the loop), for timing.

  Returns:
    (noise_fn(seed, batch, width) -> noises, prefill_fn(s_params, t_params, prompt, plen, noises, temperature),
     loop_fn(s_params, t_params, state, noises, temperature) -> (tokens, passes, accepted, state)).
  """
  def pre(s_params, t_params, prompt_BxP, plen_B, noises, temperature):
    return prefill(s_cfg, s_params, t_cfg, t_params, prompt_BxP, plen_B, noises, temperature, k=k,
                   num_tokens=num_tokens)

  def run(s_params, t_params, state, noises, temperature):
    return loop(s_cfg, s_params, t_cfg, t_params, state, noises, temperature, k=k, num_tokens=num_tokens)

  noise_fn = lambda seed, b, width: _noises(s_cfg, seed, b, width, num_tokens, k, 0)
  return noise_fn, jax.jit(pre), jax.jit(run, donate_argnums=(2,))
