"""The push-forward distillation objective: which targets, which loss, along whose rollout.

One training step of a k-slot student on data sequences tok_BxN (W = N - k windows, window t has context
tok[:t+1] and predicts positions t+1..t+k), for an `Objective`:

  targets="self_forcing" (fresh noise u per (window, slot)):
    rollout="teacher"  the frozen teacher rolls out on its own: an AR teacher by its inverse CDF under u
                       (`targets.ar_rollout`, any k), a k-model teacher by its two steps (`targets.pflm_rollout`,
                       the reference's doubling); slot i's target is the teacher's token / conditional there.
    rollout="student"  the student's own readout tokens y^ (one pass, gradient stopped) fix the prefix; slot i's
                       target is the AR teacher's p(. | ctx, y^_1..y^_{i-1}) (`targets.ar_along`). The targets
                       then condition on exactly the tokens the student emits when it decodes, so a student at
                       the optimum has the teacher's joint; needs an AR target teacher.
  targets="noise_inversion": data tokens, with u inverted through the AR teacher's CDF; the KL target is the
                       teacher's conditional along the data.
  loss="ce": cross-entropy against the target tokens (the reference). loss="kl": KL(target distribution || the
  student's hint softmax), dense over the vocabulary.
Both losses report the other one's per-slot value as a diagnostic (ce_slot{i} / kl_slot{i}), and acc_slot{i} is
the agreement of the student's readout with the target token under the same noise.
"""
import dataclasses
from typing import Tuple

import jax
import jax.numpy as jnp

from kforcing_jax.distill import inverse_cdf, losses, readout as readout_lib, targets as targets_lib

LOSSES = ("ce", "kl")
ROLLOUTS = ("teacher", "student")
TARGETS = ("self_forcing", "noise_inversion")


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a push-forward stage is trained on (see the module docstring)."""
  k: int
  loss: str = "ce"
  readout: str = "argmax"          # the student's readout (its own rollout; the accuracy diagnostic)
  rollout: str = "teacher"
  targets: str = "self_forcing"
  teacher_readout: str = "argmax"  # how a push-forward teacher turns its logits into the tokens it feeds back
  tau_range: Tuple[float, float] = (1.0, 1.0)
  mask_index: int = -1
  decision_weight: float = 1.0     # "interleaved" students: CE of decision hint S_i against the slot's own token
  slot_weighting: str = "uniform"  # per-slot loss multipliers (`losses.slot_scales`)

  def __post_init__(self):
    for name, allowed in (("loss", LOSSES), ("rollout", ROLLOUTS), ("targets", TARGETS),
                          ("readout", readout_lib.READOUTS), ("teacher_readout", readout_lib.READOUTS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"unknown {name} {getattr(self, name)!r}; expected one of {allowed}")
    if self.slot_weighting not in losses.SLOT_WEIGHTINGS:
      raise ValueError(f"unknown slot_weighting {self.slot_weighting!r}; expected one of {losses.SLOT_WEIGHTINGS}")
    lo, hi = self.tau_range
    if not 0 < lo <= hi:
      raise ValueError(f"tau_range must satisfy 0 < min <= max, got {self.tau_range}")


def check_teacher(obj: Objective, teacher_k: int, teacher_feedback: int = 0) -> None:
  """Raises ValueError when the target teacher (k_max = teacher_k; 0 = AR; teacher_feedback: its
  feedback_layers) cannot serve the objective."""
  if teacher_k > 0 and teacher_feedback:
    raise ValueError("a token-feedback k-model cannot roll out the reference's doubling targets; distill from the "
                     "AR teacher (target_teacher=ar)")
  if obj.targets == "noise_inversion" and teacher_k != 0:
    raise ValueError(f"noise_inversion needs an AR target teacher, got a k={teacher_k} push-forward model")
  if obj.rollout == "student" and teacher_k != 0:
    raise ValueError("rollout=student needs an AR target teacher (target_teacher=ar): only an AR model scores an "
                     f"arbitrary prefix, got a k={teacher_k} push-forward model")
  if obj.targets == "self_forcing" and teacher_k > 0 and obj.k != 2 * teacher_k:
    raise ValueError(f"k={obj.k} is not a doubling of the teacher's k={teacher_k} (use target_teacher=ar for "
                     "targets from the AR teacher at any k)")


def _tau(obj: Objective, key, b: int):
  lo, hi = obj.tau_range
  if lo == hi:
    return jnp.full((b,), lo, jnp.float32)
  return jax.random.uniform(key, (b,), jnp.float32, lo, hi)


def _teacher_targets(obj, teacher_model, teacher_params, ctx, noise, tau_B, student_logits):
  """(target tokens [B, W, K], target log-probs [B, W, K, V]) for self-forcing."""
  if obj.rollout == "student":
    y_hat = jax.lax.stop_gradient(readout_lib.tokens(student_logits, noise, obj.readout))
    logp = targets_lib.ar_along(teacher_model, teacher_params, ctx, y_hat[..., :-1], tau_B)
    return inverse_cdf.sample(logp, noise), logp
  if teacher_model.cfg.k_max == 0:
    return targets_lib.ar_rollout(teacher_model, teacher_params, ctx, noise, tau_B)
  return targets_lib.pflm_rollout(teacher_model, teacher_params, ctx, noise, tau_B, obj.teacher_readout)


def _feedback_forward(obj, model, params, teacher_model, teacher_params, ctx, noise, tau_B, **apply_kw):
  # A token-feedback student is teacher-forced on the prefix its targets condition on: the teacher's rollout, or
  # its own readout (found by `readout.own_rollout` without gradient).
  if obj.rollout == "student":
    own, y_prefix = readout_lib.own_rollout(model, jax.lax.stop_gradient(params), ctx, noise, tau_B, obj.readout,
                                            **apply_kw)
    tgt, tgt_logp = _teacher_targets(obj, teacher_model, teacher_params, ctx, noise, tau_B, own)
  else:
    tgt, tgt_logp = _teacher_targets(obj, teacher_model, teacher_params, ctx, noise, tau_B, None)
    y_prefix = tgt
  logits = model.apply({"params": params}, ctx, noise, tau_B, method=model.staircase, feedback_BxWxK=y_prefix,
                       **apply_kw)
  return logits, tgt, tgt_logp


def _noise_inversion(obj, teacher_model, teacher_params, tok_BxN, key, tau_B):
  b, n = tok_BxN.shape
  w, k = n - obj.k, obj.k
  logits_BxNxV = teacher_model.apply({"params": teacher_params}, tok_BxN)
  logp = jax.lax.stop_gradient(jax.nn.log_softmax(logits_BxNxV.astype(jnp.float32) / tau_B[:, None, None], -1))
  xi = jax.random.uniform(key, (b, n - 1))
  u_BxM = jax.lax.stop_gradient(inverse_cdf.invert(logp[:, :-1], tok_BxN[:, 1:], xi))
  idx_WxK = jnp.arange(w)[:, None] + jnp.arange(k)[None, :]
  return tok_BxN[:, :w], u_BxM[:, idx_WxK], tok_BxN[:, 1:][:, idx_WxK], logp[:, idx_WxK]


def pflm_loss(obj: Objective, model, params, teacher_model, teacher_params, tok_BxN, loss_mask_BxN, key,
              **apply_kw):
  """The objective's loss and diagnostics on one batch.

  Args:
    obj: the `Objective`.
    model: the student `KForcingLM` (k_max >= obj.k).
    params: the student's params (differentiated).
    teacher_model, teacher_params: the frozen target teacher (AR, or a k-model for the reference's doubling).
    tok_BxN: data tokens.
    loss_mask_BxN: 1 for real tokens.
    key: PRNG key for noises and tau.
    **apply_kw: passed to the student's apply (deterministic, rngs for dropout).
  Returns:
    (scalar loss, metrics) - see `losses.slot_cross_entropy` / `losses.slot_kl`, plus ce_slot{i} / kl_slot{i}.
  """
  b, n = tok_BxN.shape
  k_noise, k_tau = jax.random.split(key)
  tau_B = _tau(obj, k_tau, b)
  decision_logits = None
  if obj.targets == "noise_inversion":
    ctx, noise, tgt, tgt_logp = _noise_inversion(obj, teacher_model, teacher_params, tok_BxN, k_noise, tau_B)
    logits = model.apply({"params": params}, ctx, noise, tau_B, method=model.staircase, feedback_BxWxK=tgt,
                         **apply_kw)
  else:
    ctx = tok_BxN[:, : n - obj.k]
    noise = jax.random.uniform(k_noise, (b, n - obj.k, obj.k))
    if model.cfg.feedback_layers and obj.k > 1:
      logits, tgt, tgt_logp = _feedback_forward(obj, model, params, teacher_model, teacher_params, ctx, noise,
                                                tau_B, **apply_kw)
    else:
      decisions = model.cfg.hint_noise == "interleaved"
      out = model.apply({"params": params}, ctx, noise, tau_B, method=model.staircase,
                        return_decision_logits=decisions, **apply_kw)
      logits, decision_logits = out if decisions else (out, None)
      tgt, tgt_logp = _teacher_targets(obj, teacher_model, teacher_params, ctx, noise, tau_B, logits)
  weight = losses.window_weights(loss_mask_BxN, obj.k)
  scale = losses.slot_scales(obj.k, obj.slot_weighting)
  ce, ce_m = losses.slot_cross_entropy(logits, tgt, weight, obj.mask_index, scale)
  kl, kl_m = losses.slot_kl(logits, tgt_logp, weight, scale)
  main, other = (ce_m, kl_m) if obj.loss == "ce" else (kl_m, ce_m)
  metrics = dict(main)
  for i in range(obj.k):
    metrics[f"{'kl' if obj.loss == 'ce' else 'ce'}_slot{i + 1}"] = other[f"loss_slot{i + 1}"]
    metrics[f"acc_slot{i + 1}"] = ce_m[f"acc_slot{i + 1}"]
  metrics["acc_all"] = ce_m["acc_all"]
  if obj.readout == "sample":
    # Agreement of what the student would emit (its sampled tokens), not of its argmax.
    y = readout_lib.tokens(logits, noise, "sample")
    w_BxWxK = jnp.broadcast_to(weight[..., None], y.shape)
    for i, v in enumerate(losses.slot_means((y == tgt).astype(jnp.float32), w_BxWxK)):
      metrics[f"acc_slot{i + 1}"] = v
  loss = ce if obj.loss == "ce" else kl
  if decision_logits is not None:
    own = jax.lax.stop_gradient(readout_lib.tokens(logits, noise, obj.readout))
    dce, dm = losses.slot_cross_entropy(decision_logits, own, weight)
    loss = loss + obj.decision_weight * dce
    metrics["decision_ce"] = dce
    for i in range(obj.k):
      metrics[f"decision_acc_slot{i + 1}"] = dm[f"acc_slot{i + 1}"]
  return loss, metrics
