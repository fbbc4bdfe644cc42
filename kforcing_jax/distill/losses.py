"""Losses and their diagnostics: per-slot cross-entropy and KL of the push-forward LM, next-token CE of the AR teacher.

  slot_cross_entropy  CE against one target token per (window, slot): the reference's loss.
  slot_kl             KL(target distribution || the hint's softmax), dense over the vocabulary: a low-variance
                      signal where the reference's CE sees one sample of a high-entropy conditional.

Aggregation (the reference leaves it open, method.md §5): a weighted mean over every (row, window, slot) whose
weight is non-zero, where a window's weight is 1 only if all its target positions are real tokens (loss_mask) and
slots whose target is the mask token are ignored. Per-slot numbers are the same mean restricted to one slot.
`slot_scale_K` (see `slot_scales`) reweights the slots in the loss only; the per-slot diagnostics stay plain means.
"""
import jax
import jax.numpy as jnp

SLOT_WEIGHTINGS = ("uniform", "prefix")


def slot_scales(k: int, scheme: str = "uniform"):
  """Per-slot loss multipliers with mean 1: "uniform" (all 1) or "prefix" (slot i weighted k - i + 1).

  "prefix" follows the acceptance of a speculative iteration: slot i's acceptance multiplies every later slot's
  chance to count, so it enters k - i + 1 of the k prefix products.

  Args:
    k: slots.
    scheme: one of SLOT_WEIGHTINGS.
  Returns:
    float32 [k].
  """
  if scheme not in SLOT_WEIGHTINGS:
    raise ValueError(f"unknown slot_weighting {scheme!r}; expected one of {SLOT_WEIGHTINGS}")
  w = jnp.ones((k,)) if scheme == "uniform" else jnp.arange(k, 0, -1, dtype=jnp.float32)
  return w * (k / jnp.sum(w))


def window_weights(loss_mask_BxN, k: int):
  """Weight of each of the N - k windows: 1 when the k target positions t+1..t+k are all real tokens.

  Args:
    loss_mask_BxN: 1 for real tokens, 0 for padding.
    k: window size.
  Returns:
    float32 [B, N - k].
  """
  n = loss_mask_BxN.shape[1]
  w = n - k
  idx_WxK = jnp.arange(w)[:, None] + jnp.arange(1, k + 1)[None, :]
  return jnp.prod(loss_mask_BxN.astype(jnp.float32)[:, idx_WxK], axis=-1)


def slot_cross_entropy(logits_BxWxKxV, tgt_BxWxK, weight_BxW, mask_index: int = -1,
                       slot_scale_K=None) -> tuple[jax.Array, dict]:
  """Push-forward loss: mean CE over weighted (window, slot) pairs, plus per-slot diagnostics.

  Args:
    logits_BxWxKxV: student hint logits.
    tgt_BxWxK: target tokens.
    weight_BxW: window weights (see `window_weights`).
    mask_index: targets equal to it are ignored (-1: none).
    slot_scale_K: per-slot multipliers of the loss (`slot_scales`; None: all 1).
  Returns:
    (scalar loss, metrics {"loss", "loss_slot{i}", "acc_slot{i}", "acc_all", "weight"}) with 1-based slots;
    metrics are weighted sums divided by the weight, so they average correctly across batches via "weight".
  """
  k = tgt_BxWxK.shape[-1]
  logp = jax.nn.log_softmax(logits_BxWxKxV.astype(jnp.float32), axis=-1)
  ce_BxWxK = -jnp.take_along_axis(logp, tgt_BxWxK[..., None].astype(jnp.int32), -1)[..., 0]
  w_BxWxK = jnp.broadcast_to(weight_BxW[..., None], ce_BxWxK.shape).astype(jnp.float32)
  if mask_index >= 0:
    w_BxWxK = w_BxWxK * (tgt_BxWxK != mask_index)
  correct_BxWxK = (jnp.argmax(logits_BxWxKxV, -1) == tgt_BxWxK).astype(jnp.float32)
  total = jnp.maximum(jnp.sum(w_BxWxK), 1.0)
  loss = jnp.sum(ce_BxWxK * _scaled(w_BxWxK, slot_scale_K)) / total
  per_slot_w = jnp.maximum(jnp.sum(w_BxWxK, axis=(0, 1)), 1.0)
  slot_loss = jnp.sum(ce_BxWxK * w_BxWxK, axis=(0, 1)) / per_slot_w
  slot_acc = jnp.sum(correct_BxWxK * w_BxWxK, axis=(0, 1)) / per_slot_w
  all_ok = jnp.prod(jnp.where(w_BxWxK > 0, correct_BxWxK, 1.0), axis=-1)
  win_w = jnp.max(w_BxWxK, axis=-1)
  metrics = {"loss": loss, "weight": jnp.sum(w_BxWxK),
             "acc_all": jnp.sum(all_ok * win_w) / jnp.maximum(jnp.sum(win_w), 1.0)}
  for i in range(k):
    metrics[f"loss_slot{i + 1}"] = slot_loss[i]
    metrics[f"acc_slot{i + 1}"] = slot_acc[i]
  return loss, metrics


def slot_kl(logits_BxWxKxV, tgt_logp_BxWxKxV, weight_BxW, slot_scale_K=None) -> tuple[jax.Array, dict]:
  """Push-forward loss: mean over weighted (window, slot) pairs of KL(p_target || softmax(student logits)).

  Args:
    logits_BxWxKxV: student hint logits.
    tgt_logp_BxWxKxV: target log-probabilities (e.g. the teacher's conditionals, `targets.ar_rollout`).
    weight_BxW: window weights (see `window_weights`).
    slot_scale_K: per-slot multipliers of the loss (`slot_scales`; None: all 1).
  Returns:
    (scalar loss, metrics {"loss", "loss_slot{i}", "weight"}) with 1-based slots, weighted as in
    `slot_cross_entropy`.
  """
  kl_BxWxK = kl_divergence(tgt_logp_BxWxKxV, logits_BxWxKxV)
  w_BxWxK = jnp.broadcast_to(weight_BxW[..., None], kl_BxWxK.shape).astype(jnp.float32)
  loss = jnp.sum(kl_BxWxK * _scaled(w_BxWxK, slot_scale_K)) / jnp.maximum(jnp.sum(w_BxWxK), 1.0)
  metrics = {"loss": loss, "weight": jnp.sum(w_BxWxK)}
  for i, v in enumerate(slot_means(kl_BxWxK, w_BxWxK)):
    metrics[f"loss_slot{i + 1}"] = v
  return loss, metrics


def _scaled(w_BxWxK, slot_scale_K):
  return w_BxWxK if slot_scale_K is None else w_BxWxK * slot_scale_K


def kl_divergence(p_logp_xV, q_logits_xV):
  """KL(p || softmax(q_logits)) over the last axis, float32; p given as log-probabilities (0 log 0 = 0)."""
  logq = jax.nn.log_softmax(q_logits_xV.astype(jnp.float32), -1)
  p = jnp.exp(p_logp_xV)
  return jnp.sum(jnp.where(p > 0, p * (p_logp_xV - logq), 0.0), -1)


def slot_means(x_BxWxK, w_BxWxK):
  """Weighted mean of x over (row, window), per slot: float32 [K]."""
  return jnp.sum(x_BxWxK * w_BxWxK, axis=(0, 1)) / jnp.maximum(jnp.sum(w_BxWxK, axis=(0, 1)), 1.0)


def next_token_cross_entropy(logits_BxNxV, tok_BxN, loss_mask_BxN, mask_index: int = -1) -> tuple[jax.Array, dict]:
  """AR loss: logits at position j predict token j+1; padded targets get no weight.

  Args:
    logits_BxNxV: AR logits for the input tokens tok_BxN[:, :N] (the last position has no target and is unused).
    tok_BxN: the tokens.
    loss_mask_BxN: 1 for real tokens.
    mask_index: targets equal to it are ignored (-1: none).
  Returns:
    (scalar loss, {"loss", "acc", "weight"}).
  """
  tgt = tok_BxN[:, 1:]
  w = loss_mask_BxN[:, 1:].astype(jnp.float32)
  if mask_index >= 0:
    w = w * (tgt != mask_index)
  logits = logits_BxNxV[:, : tgt.shape[1]]
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  ce = -jnp.take_along_axis(logp, tgt[..., None].astype(jnp.int32), -1)[..., 0]
  total = jnp.maximum(jnp.sum(w), 1.0)
  loss = jnp.sum(ce * w) / total
  acc = jnp.sum((jnp.argmax(logits, -1) == tgt) * w) / total
  return loss, {"loss": loss, "acc": acc, "weight": jnp.sum(w)}
