"""Push-forward training targets (method.md §4-6), computed from a frozen teacher inside the jitted step.

For a batch of data sequences tok_BxN and a student with window size k, there are W = N - k windows; window t has
context tok[:, :t+1] and predicts the k tokens at positions t+1..t+k.
  self_forcing_from_ar     AR teacher -> k=1: tgt = teacher's inverse-CDF sample at fresh noise.
  self_forcing_doubling    k-model teacher -> 2k: tgt = the teacher's two rollout steps (staircase + double forward).
  noise_inversion          AR teacher -> any k: tgt = data tokens, noise = the teacher's inverse CDF at the data.
  ar_rollout               AR teacher -> any k: its own inverse-CDF rollout under the slot noises, with the
                           conditional it sampled each slot from (the dense target of the KL loss).
  pflm_rollout             k-model teacher -> 2k: `self_forcing_doubling` with the teacher's slot distributions.
  ar_along                 the AR teacher's conditionals along given continuations (e.g. the student's own).
All noise-to-token maps go through `inverse_cdf` / `readout` (one convention everywhere).
"""
import functools

import jax
import jax.numpy as jnp

from kforcing_jax.distill import inverse_cdf, readout as readout_lib


def _windows(tok_BxN, k):
  w = tok_BxN.shape[1] - k
  return tok_BxN[:, :w], jnp.arange(w)[:, None] + jnp.arange(k)[None, :]


def self_forcing_from_ar(model, teacher_params, tok_BxN, noise_BxWx1, tau_B):
  """AR teacher -> k=1 student: the teacher's inverse-CDF sample at each data context.

  Args:
    model: a `KForcingLM` built with the teacher's config (k_max = 0).
    teacher_params: its inner params dict.
    tok_BxN: data tokens.
    noise_BxWx1: fresh uniforms, W = N - 1.
    tau_B: sampling temperature per row.
  Returns:
    (ctx_BxW, noise_BxWx1, tgt_BxWx1).
  """
  ctx_BxW, _ = _windows(tok_BxN, 1)
  logits_BxWxV = model.apply({"params": teacher_params}, ctx_BxW)
  tgt_BxW = inverse_cdf.sample(logits_BxWxV, noise_BxWx1[..., 0], tau_B[:, None, None])
  return ctx_BxW, noise_BxWx1, jax.lax.stop_gradient(tgt_BxW[..., None])


def ar_along(model, teacher_params, ctx_BxW, y_BxWxJ, tau_B):
  """The AR teacher's log-probabilities (at temperature tau) of every window's next J + 1 positions along y.

  Args:
    model: a `KForcingLM` with the AR teacher's config.
    teacher_params: its inner params dict.
    ctx_BxW: data contexts.
    y_BxWxJ: each window's continuation tokens (slot i's target conditions on y_1..y_{i-1}).
    tau_B: temperature per row.
  Returns:
    float32 log-probs [B, W, J + 1, V], gradient stopped.
  """
  logits = model.apply({"params": teacher_params}, ctx_BxW, y_BxWxJ, method=model.prefix_logits)
  return jax.lax.stop_gradient(jax.nn.log_softmax(logits.astype(jnp.float32) / tau_B[:, None, None, None], -1))


def ar_rollout(model, teacher_params, ctx_BxW, noise_BxWxK, tau_B):
  """The AR teacher's own inverse-CDF rollout of K tokens per window, and the conditional behind each token.

  Slot i's token is the inverse CDF of p(. | ctx, y_1..y_{i-1}) at u_i; every window of the batch at once, as a
  cached rollout: one AR pass over the contexts, then one row per window and slot (`KForcingLM.window_step`).

  Args:
    model: a `KForcingLM` with the AR teacher's config.
    teacher_params: its inner params dict.
    ctx_BxW: data contexts.
    noise_BxWxK: slot uniforms.
    tau_B: temperature per row.
  Returns:
    (tokens int32 [B, W, K], log-probs float32 [B, W, K, V]), gradients stopped.
  """
  apply = functools.partial(model.apply, {"params": teacher_params})
  logp = lambda logits: jax.lax.stop_gradient(jax.nn.log_softmax(logits.astype(jnp.float32) / tau_B[:, None, None], -1))
  logits, ctx_states = apply(ctx_BxW, method=model.context_states)
  ys, logps, own = [], [], None
  for i in range(noise_BxWxK.shape[-1]):
    if i:  # one new row per window: the context and the earlier slots' keys are kept, not recomputed
      logits, own = apply(ys[-1], ctx_states, own, j=i, method=model.window_step)
    logps.append(logp(logits))
    ys.append(inverse_cdf.sample(logps[-1], noise_BxWxK[..., i]))
  return jax.lax.stop_gradient(jnp.stack(ys, -1)), jnp.stack(logps, 2)


def pflm_rollout(model, teacher_params, ctx_BxW, noise_BxWxK, tau_B, readout: str = "argmax"):
  """A k-model's two rollout steps for a 2k student (method.md §6), with the distribution of every slot.

  Args:
    model: a `KForcingLM` with the teacher's config (k_max = k).
    teacher_params: its inner params dict.
    ctx_BxW: data contexts (W = N - 2k).
    noise_BxWxK: uniforms with K = 2k: the first half drives step 1, the second step 2.
    tau_B: temperature per row (fed to the teacher's noise encoder).
    readout: how the teacher turns its hint logits into the tokens it feeds back ("argmax" | "sample").
  Returns:
    (tokens int32 [B, W, K], log-probs float32 [B, W, K, V]), gradients stopped.
  """
  kk = noise_BxWxK.shape[-1]
  if kk % 2:
    raise ValueError(f"a doubling stage needs an even student k, got {kk}")
  half = kk // 2
  variables = {"params": teacher_params}
  u1, u2 = noise_BxWxK[..., :half], noise_BxWxK[..., half:]
  logits1 = model.apply(variables, ctx_BxW, u1, tau_B, method=model.staircase)
  y1 = readout_lib.tokens(logits1, u1, readout)
  logits2 = model.apply(variables, ctx_BxW, y1, u2, tau_B, method=model.double_forward)
  y2 = readout_lib.tokens(logits2, u2, readout)
  logp = jax.nn.log_softmax(jnp.concatenate([logits1, logits2], 2).astype(jnp.float32), -1)
  return jax.lax.stop_gradient(jnp.concatenate([y1, y2], -1)), jax.lax.stop_gradient(logp)


def self_forcing_doubling(model, teacher_params, tok_BxN, noise_BxWxK, tau_B):
  """k-model teacher -> 2k student: the teacher rolled out twice on its own outputs (method.md §6).

  The 2k noises split into halves: y1 = argmax of the teacher's staircase pass with the first half, y2 = argmax
  of its double forward (y1 fed back as real tokens) with the second; the student sees all 2k noises at once.

  Args:
    model: a `KForcingLM` with the teacher's config (k_max = k).
    teacher_params: its inner params dict.
    tok_BxN: data tokens.
    noise_BxWxK: fresh uniforms with K = 2k, W = N - 2k.
    tau_B: temperature per row.
  Returns:
    (ctx_BxW, noise_BxWxK, tgt_BxWxK).
  """
  ctx_BxW, _ = _windows(tok_BxN, noise_BxWxK.shape[-1])
  tgt, _ = pflm_rollout(model, teacher_params, ctx_BxW, noise_BxWxK, tau_B)
  return ctx_BxW, noise_BxWxK, tgt


def invert_data(model, teacher_params, tok_BxN, xi_BxN, tau_B):
  """Noise inversion of data: u_j in the teacher's interval of token j given tok[:, :j] (method.md §4A).

  Args:
    model: a `KForcingLM` with the AR teacher's config.
    teacher_params: its inner params dict.
    tok_BxN: data tokens.
    xi_BxN: uniforms placing u inside each interval (only [:, 1:] is used).
    tau_B: temperature per row.
  Returns:
    float32 u [B, N - 1]: u[:, j - 1] belongs to token j (j = 1..N-1).
  """
  logits_BxNxV = model.apply({"params": teacher_params}, tok_BxN)
  return jax.lax.stop_gradient(
      inverse_cdf.invert(logits_BxNxV[:, :-1], tok_BxN[:, 1:], xi_BxN[:, 1:], tau_B[:, None, None]))


def noise_inversion(model, teacher_params, tok_BxN, xi_BxN, tau_B, k: int):
  """Data windows with their inverted noises: tgt[t, i] = tok[t+1+i], noise[t, i] = u_{t+1+i}.

  Args:
    model: a `KForcingLM` with the AR teacher's config.
    teacher_params: its inner params dict.
    tok_BxN: data tokens.
    xi_BxN: uniforms placing u inside each token's interval.
    tau_B: temperature per row.
    k: the student's window size.
  Returns:
    (ctx_BxW, noise_BxWxK, tgt_BxWxK) with W = N - k.
  """
  u_BxM = invert_data(model, teacher_params, tok_BxN, xi_BxN, tau_B)
  ctx_BxW, idx_WxK = _windows(tok_BxN, k)
  return ctx_BxW, u_BxM[:, idx_WxK], tok_BxN[:, 1:][:, idx_WxK]
