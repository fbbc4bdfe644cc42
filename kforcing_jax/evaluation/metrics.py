"""Fidelity and quality metrics of a push-forward student against its AR teacher.

  slot_fidelity    teacher-forced on held-out contexts, fresh noise: per slot i, KL(p_i || q_i) and TV, where q_i
                   is the student's hint softmax and p_i the teacher's conditional given the context and the
                   tokens the student itself emitted at slots < i (its readout), i.e. the prefix its decoder
                   really continues. That pair sets the quality of the student's samples and the acceptance rate
                   of speculative decoding (1 - TV per slot). TV is exact for a sampled-readout student whose hint
                   i never sees u_i; otherwise (argmax readout, or the reference layout) it is the TV to the
                   readout's induced distribution of slot i, estimated over `tv_samples` draws of u_i. Also the KL
                   along the teacher's own inverse-CDF rollout under the same noise (`slot_kl_teacher_rollout`).
  slot_agreement   teacher-forced on held-out contexts, shared noise: for every window t and slot i, the student's
                   hint argmax vs the teacher's sequential inverse-CDF rollout token from x<=t with the same u
                   (u of the token's absolute position). Reported per slot, and as prefix agreement (slots 1..i all
                   agree: what verify mode can accept).
  gen_ppl          exp(mean NLL) of generated tokens under the teacher (temperature 1).
  entropy          unigram entropy of each sample's tokens (nats), averaged over samples.
  distinct_n       unique n-grams / n-grams per sample, averaged.
"""
import collections
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kforcing_jax.decoding import ar, common
from kforcing_jax.distill import losses, readout as readout_lib, targets
from kforcing_jax.models.config import ModelConfig
from kforcing_jax.models.transformer import KForcingLM


@functools.lru_cache(maxsize=16)
def _staircase_argmax(cfg: ModelConfig):
  model = KForcingLM(cfg)
  return jax.jit(lambda p, ctx, noise, tau: readout_lib.own_rollout(model, p, ctx, noise, tau, "argmax")[1])


@functools.lru_cache(maxsize=16)
def _fidelity_fn(s_cfg: ModelConfig, t_cfg: ModelConfig, readout: str):
  student, teacher = KForcingLM(s_cfg), KForcingLM(t_cfg)

  def run(s_params, t_params, ctx, noise, tau):
    q_logits, y_hat = readout_lib.own_rollout(student, s_params, ctx, noise, tau, readout)
    p_logp = targets.ar_along(teacher, t_params, ctx, y_hat[..., :-1], tau)
    _, p_teacher = targets.ar_rollout(teacher, t_params, ctx, noise, tau)
    tv = 0.5 * jnp.sum(jnp.abs(jnp.exp(p_logp) - jax.nn.softmax(q_logits, -1)), -1)
    return (losses.kl_divergence(p_logp, q_logits).mean((0, 1)), tv.mean((0, 1)),
            losses.kl_divergence(p_teacher, q_logits).mean((0, 1)), jnp.exp(p_logp))
  return jax.jit(run)


@functools.lru_cache(maxsize=16)
def _slot_tokens_fn(s_cfg: ModelConfig, readout: str, slot: int):
  student = KForcingLM(s_cfg)

  def run(s_params, ctx, noise, u_slot, tau):
    noise = noise.at[..., slot].set(u_slot)
    return readout_lib.own_rollout(student, s_params, ctx, noise, tau, readout)[1][..., slot]
  return jax.jit(run)


def slot_fidelity(s_cfg: ModelConfig, s_params, t_cfg: ModelConfig, t_params, tok_BxL, k: int, readout: str,
                  seed: int = 0, tv_samples: int = 32, tau: float = 1.0) -> dict:
  """Per-slot KL and TV of the student against the teacher along the student's own readout (module docstring).

  Args:
    s_cfg, s_params: the push-forward student.
    t_cfg, t_params: the AR teacher.
    tok_BxL: held-out token sequences (no padding); every window t = 0..L-k-1 is a context.
    k: slots (<= s_cfg.k_max).
    readout: the student's readout ("argmax" | "sample").
    seed: noise seed.
    tv_samples: draws of u_i per context for the induced-distribution TV (when it is not exact).
    tau: temperature (teacher softmax, student noise encoder).
  Returns:
    {"slot_kl": [K], "slot_tv": [K], "slot_tv_method": "exact" | "monte_carlo", "slot_kl_teacher_rollout": [K]}.
  """
  tok = jnp.asarray(tok_BxL, jnp.int32)
  b, length = tok.shape
  ctx = tok[:, : length - k]
  key = jax.random.key(seed)
  noise = jax.random.uniform(key, ctx.shape + (k,))
  tau_B = jnp.full((b,), tau, jnp.float32)
  kl, tv, kl_teacher, p = _fidelity_fn(s_cfg, t_cfg, readout)(s_params, t_params, ctx, noise, tau_B)
  exact = readout == "sample" and s_cfg.hint_noise != "current"
  if not exact:
    tv = []
    for i in range(k):
      counts = np.zeros(p.shape[:2] + p.shape[-1:], np.float64)
      fn = _slot_tokens_fn(s_cfg, readout, i)
      for m in range(tv_samples):
        u_i = jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, i + 1), m), ctx.shape)
        y = np.asarray(fn(s_params, ctx, noise, u_i, tau_B))
        np.put_along_axis(counts, y[..., None], np.take_along_axis(counts, y[..., None], -1) + 1, -1)
      tv.append(float(0.5 * np.abs(np.asarray(p[:, :, i], np.float64) - counts / tv_samples).sum(-1).mean()))
  as_list = lambda x: [float(v) for v in np.asarray(x)]
  return {"slot_kl": as_list(kl), "slot_tv": as_list(tv), "slot_tv_method": "exact" if exact else "monte_carlo",
          "slot_kl_teacher_rollout": as_list(kl_teacher)}


@functools.lru_cache(maxsize=16)
def _rollout(cfg: ModelConfig, k: int):
  def run(params, prompt, plen, u):
    cache, tok = ar.prefill(cfg, params, prompt, plen, u, 1.0, num_tokens=k)
    return ar.steps(cfg, params, cache, tok, u, 1.0, num_tokens=k)[0]
  return jax.jit(run)


def slot_agreement(s_cfg: ModelConfig, s_params, t_cfg: ModelConfig, t_params, tok_BxL, k: int, seed: int = 0,
                   windows: int = 16):
  """Per-slot agreement of student and teacher under shared noise, teacher-forced on data contexts.

  Args:
    s_cfg, s_params: the push-forward student.
    t_cfg, t_params: the AR teacher.
    tok_BxL: held-out token sequences (no padding).
    k: slots (<= s_cfg.k_max).
    seed: noise seed.
    windows: evaluate the last `windows` windows of each sequence (evenly spaced, to bound the rollout batch).
  Returns:
    (slot agreement [K], prefix agreement [K]) as float lists.
  """
  tok = jnp.asarray(tok_BxL, jnp.int32)
  b, length = tok.shape
  w = length - k
  u = common.position_noise(seed, b, length + k + 1)
  noise = u[:, jnp.arange(w)[:, None] + 1 + jnp.arange(k)[None, :]]  # window t, slot i reads u_{t+1+i}
  y = _staircase_argmax(s_cfg)(s_params, tok[:, :w], noise, jnp.ones((b,)))  # [B, W, K]
  ts = np.unique(np.linspace(0, w - 1, min(windows, w)).round().astype(int))
  # Teacher: one AR rollout of K tokens per (sequence, window), all windows as one ragged batch.
  prompt = jnp.repeat(tok, len(ts), 0)
  plen = jnp.tile(jnp.asarray(ts + 1, jnp.int32), b)
  z = _rollout(t_cfg, k)(t_params, prompt, plen, jnp.repeat(u, len(ts), 0)).reshape(b, len(ts), k)
  eq = np.asarray(y[:, ts] == z)
  return eq.mean((0, 1)).tolist(), np.cumprod(eq, -1).mean((0, 1)).tolist()


@functools.lru_cache(maxsize=16)
def _forward_nll(cfg: ModelConfig):
  model = KForcingLM(cfg)

  def run(params, seq):
    logp = jax.nn.log_softmax(model.apply({"params": params}, seq[:, :-1]), -1)
    return -jnp.take_along_axis(logp, seq[:, 1:, None], -1)[..., 0]
  return jax.jit(run)


def teacher_nll(t_cfg: ModelConfig, t_params, prompt_ids: Sequence[Sequence[int]], gen_BxN) -> np.ndarray:
  """NLL (nats) under the teacher of each generated token given prompt + earlier tokens: float [B, N]."""
  gen = np.asarray(gen_BxN)
  n = gen.shape[1]
  width = max(len(p) for p in prompt_ids) + n
  seq = np.zeros((len(prompt_ids), width), np.int32)
  for i, p in enumerate(prompt_ids):  # causal model: zero padding after the sequence changes nothing
    seq[i, :len(p)] = p
    seq[i, len(p):len(p) + n] = gen[i]
  nll = np.asarray(_forward_nll(t_cfg)(t_params, jnp.asarray(seq)))
  return np.stack([nll[i, len(p) - 1:len(p) - 1 + n] for i, p in enumerate(prompt_ids)])


def unigram_entropy(samples: Sequence[Sequence[int]]) -> float:
  """Mean over samples of the entropy (nats) of the sample's token frequencies."""
  ents = []
  for s in samples:
    c = np.array(list(collections.Counter(list(map(int, s))).values()), np.float64)
    p = c / c.sum()
    ents.append(float(-(p * np.log(p)).sum()))
  return float(np.mean(ents))


def distinct_n(samples: Sequence[Sequence[int]], n: int) -> float:
  """Mean over samples of (unique n-grams / n-grams)."""
  vals = []
  for s in samples:
    grams = [tuple(s[i:i + n]) for i in range(len(s) - n + 1)]
    if grams:
      vals.append(len(set(grams)) / len(grams))
  return float(np.mean(vals)) if vals else 0.0


def sample_metrics(t_cfg: ModelConfig, t_params, prompt_ids, gen_BxN) -> dict:
  """gen-PPL under the teacher, unigram entropy and distinct-2/3 of fixed-length samples."""
  gen = np.asarray(gen_BxN)
  nll = teacher_nll(t_cfg, t_params, prompt_ids, gen)
  rows = [list(r) for r in gen]
  return {"gen_ppl": float(math.exp(nll.mean())), "entropy": unigram_entropy(rows),
          "distinct_2": distinct_n(rows, 2), "distinct_3": distinct_n(rows, 3)}
