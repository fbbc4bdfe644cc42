"""Lossless verify mode: push-forward drafts checked by the AR teacher under the same noise.

Per iteration and row: the student drafts d_1..d_K for positions p..p+K-1 from u_p..u_{p+K-1}; the teacher scores
[last accepted token, d_1..d_K] in one cached pass and computes its own inverse-CDF token t_i at each slot with the
same u (t_i predicts position p+i). The row accepts the longest prefix with d_{i+1} = t_i (m tokens) and then
t_m: the teacher's token at the first disagreement, or a bonus token when all K agree. Since every emitted token is
t_i, the teacher's inverse-CDF sample for u at that position given the accepted prefix, the output is token for
token the AR sampler's (`ar`, sampler "icdf") for the same noise. That holds in exact arithmetic and in the tests;
in float32 the teacher's logits from a (K+1)-token scoring pass and from a one-token AR step differ in the last
bits. When u falls in the far tail of the sorted CDF, where single tokens carry ~1e-6 of probability (a few units of
the integer weights, `inverse_cdf`), that can move the crossing to a neighbouring token of almost the same
probability, and the row diverges from there (`matches_teacher` in `evaluation.report` measures how often;
docs/results.md has the numbers). Each emitted token is still the teacher's inverse-CDF sample under its
own logits.

Ragged acceptance is handled by positions: the teacher's cache holds every accepted token except the newest, so a
rejected draft is rolled back by not advancing cache["len"] past it (stale slots are masked, then overwritten);
the student receives the m+1 newly accepted tokens t_0..t_m as a right-padded block with per-row n_new = m+1.
Rows that are done stop advancing (n_new = 0) while the `lax.while_loop` runs until every row has num_tokens.
"""
import functools

import jax
import jax.numpy as jnp

from kforcing_jax.decoding.common import cache_slots, gather_positions, position_noise, push_forward_step
from kforcing_jax.distill import inverse_cdf
from kforcing_jax.models.config import ModelConfig
from kforcing_jax.models.transformer import KForcingLM, init_cache


def cache_size(prompt_width: int, num_tokens: int, k: int) -> int:
  # A row stops with at most num_tokens + K accepted; its frozen teacher pass still writes K+1 slots.
  return cache_slots(prompt_width + num_tokens + 2 * k + 2)


def noise_length(prompt_width: int, num_tokens: int, k: int) -> int:
  return cache_size(prompt_width, num_tokens, k) + k


def _draft(student, s_params, tok_BxT, n_new_B, cache, u_BxS, tau_B, k, mode="argmax"):
  pos = (cache["len"] + n_new_B)[:, None] + jnp.arange(k)[None, :]
  y, _, _, cache = push_forward_step(student, s_params, tok_BxT, n_new_B, cache, gather_positions(u_BxS, pos), tau_B,
                                     mode)
  return y, cache


def prefill(s_cfg: ModelConfig, s_params, t_cfg: ModelConfig, t_params, prompt_BxP, plen_B, u_BxS, temperature, *,
            k: int, num_tokens: int, readout: str = "argmax"):
  """Prompts into both caches (the teacher's without the last prompt token) and the first drafts.

  Args:
    s_cfg, s_params: the push-forward student.
    t_cfg, t_params: the AR teacher (any model's AR path).
    prompt_BxP: right-padded prompts; plen_B their lengths (>= 1).
    u_BxS: noise by absolute position.
    temperature: the teacher's sampling temperature, also fed to the student as tau.
    k: drafts per iteration.
    num_tokens: new tokens per row.
    readout: the student's draft readout ("argmax" | "sample").
  Returns:
    The loop state (dict).
  """
  student, teacher = KForcingLM(s_cfg), KForcingLM(t_cfg)
  b, p = prompt_BxP.shape
  size = cache_size(p, num_tokens, k)
  tau = jnp.full((b,), temperature, jnp.float32)
  drafts, cs = _draft(student, s_params, prompt_BxP, plen_B, init_cache(s_cfg, b, size), u_BxS, tau, k, readout)
  # n_new may be 0 here (a one-token prompt): the written slot is masked and overwritten by the first pass.
  _, _, ct = teacher.apply({"params": t_params}, prompt_BxP, plen_B - 1, init_cache(t_cfg, b, size),
                           method=teacher.decode)
  last = jnp.take_along_axis(prompt_BxP, (plen_B - 1)[:, None], 1)[:, 0]
  zeros = jnp.zeros((b,), jnp.int32)
  return {"cs": cs, "ct": ct, "drafts": drafts, "last": last, "out": jnp.zeros((b, num_tokens + k + 1), jnp.int32),
          "n_acc": zeros, "iters": zeros}


def score_drafts(teacher, t_params, s, k: int):
  """The teacher's cached pass over [last accepted token, drafts]: (logits [B, K+1, V], its cache, the positions
  [B, K+1] its outputs predict)."""
  b = s["last"].shape[0]
  feed = jnp.concatenate([s["last"][:, None], s["drafts"]], 1)
  logits, _, ct = teacher.apply({"params": t_params}, feed, jnp.full((b,), k + 1, jnp.int32), s["ct"],
                                ctx_logits="all", method=teacher.decode)
  return logits, ct, s["ct"]["len"][:, None] + 1 + jnp.arange(k + 1)[None, :]


def commit(s, ct, t_BxK1, m_B, num_tokens: int):
  """Keeps m accepted drafts + one teacher token per active row: (active [B], new tokens [B], updated state)."""
  write = jax.vmap(lambda row, new, at: jax.lax.dynamic_update_slice(row, new, (at,)))
  active = s["n_acc"] < num_tokens
  n_new = jnp.where(active, m_B + 1, 0)
  out = jnp.where(active[:, None], write(s["out"], t_BxK1, s["n_acc"]), s["out"])
  last = jnp.where(active, jnp.take_along_axis(t_BxK1, m_B[:, None], 1)[:, 0], s["last"])
  return active, n_new, {"ct": dict(ct, len=s["ct"]["len"] + n_new), "out": out, "last": last,
                         "n_acc": s["n_acc"] + n_new}


def loop(s_cfg: ModelConfig, s_params, t_cfg: ModelConfig, t_params, state, u_BxS, temperature, *, k: int,
         num_tokens: int, readout: str = "argmax"):
  """Draft-verify iterations as one `lax.while_loop` until every row has num_tokens tokens.

  Returns:
    (int32 tokens [B, num_tokens], int32 teacher passes per row [B] (excluding the prefill), final state).
  """
  student, teacher = KForcingLM(s_cfg), KForcingLM(t_cfg)
  b = state["last"].shape[0]
  tau = jnp.full((b,), temperature, jnp.float32)

  def body(s):
    logits, ct, pos = score_drafts(teacher, t_params, s, k)
    t = inverse_cdf.sample(logits, gather_positions(u_BxS, pos), temperature)
    m = jnp.sum(jnp.cumprod(s["drafts"] == t[:, :k], 1), 1).astype(jnp.int32)
    active, n_new, kept = commit(s, ct, t, m, num_tokens)
    drafts, cs = _draft(student, s_params, t, n_new, s["cs"], u_BxS, tau, k, readout)
    return {**kept, "cs": cs, "drafts": drafts, "iters": s["iters"] + active.astype(jnp.int32)}

  s = jax.lax.while_loop(lambda s: jnp.any(s["n_acc"] < num_tokens), body, state)
  return s["out"][:, :num_tokens], s["iters"], s


@functools.lru_cache(maxsize=32)
def decoder(s_cfg: ModelConfig, t_cfg: ModelConfig, k: int, num_tokens: int, readout: str = "argmax"):
  """One jitted verify decoder per (student, teacher, K, num_tokens, readout); retraces per (batch, width).

  Returns:
    fn(s_params, t_params, prompt_BxP, plen_B, seed, temperature, row_offset) -> (tokens [B, N], passes [B]).
  """
  def run(s_params, t_params, prompt_BxP, plen_B, seed, temperature, row_offset):
    b, p = prompt_BxP.shape
    u = position_noise(seed, b, noise_length(p, num_tokens, k), row_offset)
    state = prefill(s_cfg, s_params, t_cfg, t_params, prompt_BxP, plen_B, u, temperature, k=k, num_tokens=num_tokens,
                    readout=readout)
    return loop(s_cfg, s_params, t_cfg, t_params, state, u, temperature, k=k, num_tokens=num_tokens,
                readout=readout)[:2]

  return jax.jit(run)


@functools.lru_cache(maxsize=32)
def phases(s_cfg: ModelConfig, t_cfg: ModelConfig, k: int, num_tokens: int, readout: str = "argmax"):
  """Prefill and loop as two jitted functions (the state is donated to the loop and returned), for timing."""
  def pre(s_params, t_params, prompt_BxP, plen_B, u_BxS, temperature):
    return prefill(s_cfg, s_params, t_cfg, t_params, prompt_BxP, plen_B, u_BxS, temperature, k=k,
                   num_tokens=num_tokens, readout=readout)

  def run(s_params, t_params, state, u_BxS, temperature):
    return loop(s_cfg, s_params, t_cfg, t_params, state, u_BxS, temperature, k=k, num_tokens=num_tokens,
                readout=readout)

  return jax.jit(pre), jax.jit(run, donate_argnums=(2,))
