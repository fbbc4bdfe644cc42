"""Losses and their diagnostics: per-slot cross-entropy of the push-forward LM, next-token CE of the AR teacher.

Aggregation (the reference leaves it open, method.md §5): a weighted mean over every (row, window, slot) whose
weight is non-zero, where a window's weight is 1 only if all its target positions are real tokens (loss_mask) and
slots whose target is the mask token are ignored. Per-slot numbers are the same mean restricted to one slot.
"""
import jax
import jax.numpy as jnp


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


def slot_cross_entropy(logits_BxWxKxV, tgt_BxWxK, weight_BxW, mask_index: int = -1) -> tuple[jax.Array, dict]:
  """Push-forward loss: mean CE over weighted (window, slot) pairs, plus per-slot diagnostics.

  Args:
    logits_BxWxKxV: student hint logits.
    tgt_BxWxK: target tokens.
    weight_BxW: window weights (see `window_weights`).
    mask_index: targets equal to it are ignored (-1: none).
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
  loss = jnp.sum(ce_BxWxK * w_BxWxK) / total
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
