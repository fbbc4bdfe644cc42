"""Pieces shared by the decoders: noise indexed by absolute position, prompt batches, readout, EOS, validation.

Noise convention: u[b, j] ~ U[0, 1) is the noise of the token at absolute position j of row b, and depends only on
(seed, row index, j). AR sampling maps u_j to a token through the teacher's inverse CDF; push-forward hint i of a
step that predicts position j reads u_j. So AR, push-forward and verify runs with the same seed see the same noise,
whatever the batch size, prompt padding or K.
"""
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kforcing_jax.distill import readout as readout_lib
from kforcing_jax.models.config import ModelConfig


def position_noise(seed, batch: int, length: int, row_offset=0, stream: int = 0) -> jax.Array:
  """u[b, j] ~ U[0, 1) (float32) from fold_in(seed, row_offset + b, j): independent of batch and padding.

  Args:
    seed: int (may be traced).
    batch: rows.
    length: positions 0..length-1.
    row_offset: global index of row 0 (so a prompt gets the same noise in any batch of a prompt file).
    stream: 0 is the noise every decoder shares; other values give independent streams of the same shape
      (speculative decoding's acceptance and residual uniforms).
  Returns:
    float32 [batch, length].
  """
  key = jax.random.key(seed)
  if stream:
    key = jax.random.fold_in(key, 1_000_003 + stream)
  rows = row_offset + jnp.arange(batch)

  def one(b, j):
    return jax.random.uniform(jax.random.fold_in(jax.random.fold_in(key, b), j), (), jnp.float32)

  return jax.vmap(lambda b: jax.vmap(lambda j: one(b, j))(jnp.arange(length)))(rows)


def gather_positions(u_BxS, pos_BxN):
  """u at per-row absolute positions (clipped into the buffer)."""
  return jnp.take_along_axis(u_BxS, jnp.clip(pos_BxN, 0, u_BxS.shape[1] - 1), 1)


SLOT_MULTIPLE = 16   # cache lengths stay multiples of this (the Pallas decode kernel's tile height on GPU)
SEGMENTS = 4         # a step loop runs as this many scans, each over a cache just long enough for it


def cache_slots(needed: int) -> int:
  """Cache length for `needed` slots, rounded up to SLOT_MULTIPLE."""
  return int(math.ceil(needed / SLOT_MULTIPLE) * SLOT_MULTIPLE)


def grow_cache(cache, size: int):
  """The cache with its slot axis zero-padded to `size` (no-op when already that long)."""
  pad = size - cache["k"][0].shape[2]
  if pad <= 0:
    return cache
  grow = lambda c: jnp.pad(c, ((0, 0), (0, 0), (0, pad), (0, 0)))
  return {"k": [grow(c) for c in cache["k"]], "v": [grow(c) for c in cache["v"]], "len": cache["len"]}


def _segment_bounds(length: int, segments: int):
  return sorted({round(i * length / max(segments, 1)) for i in range(segments + 1)})


def loop_cache_slots(prompt_width: int, per_step: int, length: int, segments: int = SEGMENTS) -> int:
  """Slots of the cache `prefill` allocates: enough for the prompt and the first segment of the step loop.

  Args:
    prompt_width: the padded prompt width (rows hold at most this many tokens after prefill).
    per_step: tokens each loop step writes per row.
    length: number of loop steps.
    segments: see `scan_growing_cache`.
  Returns:
    A multiple of SLOT_MULTIPLE.
  """
  first = _segment_bounds(length, segments)[1] if length > 0 else 0
  return cache_slots(prompt_width + per_step * first)


def scan_growing_cache(step: Callable, carry: dict, length: int, per_step: int, unroll: int = 1,
                       segments: int = SEGMENTS):
  """`lax.scan(step, carry, None, length)` with the KV cache grown in segments instead of preallocated in full.

  Attention reads the whole cache array on every step (XLA cannot slice it to the valid length), which at large
  batch is a visible share of a step's memory traffic. So the loop runs as `segments` scans; before each, carry["cache"] is
  zero-padded to the slots its last step needs. Padded slots are never valid, so the result equals one scan over
  the full cache. The incoming cache (from `prefill`, sized by `loop_cache_slots`) already fits the first segment;
  each later segment costs one cache copy and one compiled scan body.

  Args:
    step: scan body (carry, None) -> (carry, y); carry["cache"] is a cache from `init_cache`.
    carry: initial carry.
    length: number of steps.
    per_step: tokens each step writes per row.
    unroll: `lax.scan` unroll factor.
    segments: number of scans.
  Returns:
    (final carry, stacked per-step outputs [length, ...], or None when length is 0).
  """
  bounds = _segment_bounds(length, segments)
  if length <= 0:
    return carry, None
  # The incoming cache covers the prompt plus the first segment, which bounds the prompt width from above.
  base = carry["cache"]["k"][0].shape[2] - per_step * bounds[1]
  ys = []
  for j0, j1 in zip(bounds[:-1], bounds[1:]):
    carry = {**carry, "cache": grow_cache(carry["cache"], cache_slots(base + per_step * j1))}
    carry, y = jax.lax.scan(step, carry, None, length=j1 - j0, unroll=unroll)
    ys.append(y)
  return carry, jax.tree.map(lambda *a: jnp.concatenate(a, 0), *ys)


def pad_prompts(prompts: Sequence[Sequence[int]], pad_id: int = 0, multiple: int = 8):
  """Right-pads token lists into one batch; the width is rounded up to `multiple` to limit recompiles.

  Args:
    prompts: token id lists (each non-empty).
    pad_id: filler id (never read: rows carry their own lengths).
    multiple: width granularity.
  Returns:
    (int32 [B, P] numpy tokens, int32 [B] lengths).
  """
  lens = np.array([len(p) for p in prompts], np.int32)
  width = int(math.ceil(max(int(lens.max()), 1) / multiple) * multiple)
  tok = np.full((len(prompts), width), max(pad_id, 0), np.int32)
  for i, p in enumerate(prompts):
    tok[i, : len(p)] = np.asarray(p, np.int32)
  return tok, lens


def readout(logits_BxKxV, counts_BxV, lam, u_BxK=None, mode: str = "argmax"):
  """Push-forward readout of one step's hint logits, optionally with the frequency penalty (docs/method.md §3).

  mode "argmax" takes y_i = argmax per hint (the reference); "sample" the inverse CDF of hint i's softmax at u_i
  (`distill.readout`). With a penalty, slots are read sequentially inside the block from logits_i - lam * count,
  then count[y_i] += 1, so a token chosen at slot i is already penalised at slot i+1. Counts cover generated
  tokens only and persist across steps (the caller carries them).

  Args:
    logits_BxKxV: hint logits.
    counts_BxV: float32 counts of generated tokens, or None for no penalty.
    lam: penalty weight (scalar, may be traced).
    u_BxK: the slots' uniforms (mode "sample").
    mode: "argmax" | "sample".
  Returns:
    (int32 tokens [B, K], updated counts or None).
  """
  if counts_BxV is None:
    return readout_lib.tokens(logits_BxKxV, u_BxK, mode), None
  ys = []
  for i in range(logits_BxKxV.shape[1]):
    lg = (logits_BxKxV[:, i] - lam * counts_BxV)[:, None]
    y = readout_lib.tokens(lg, None if u_BxK is None else u_BxK[:, i:i + 1], mode)[:, 0]
    counts_BxV = counts_BxV + jax.nn.one_hot(y, counts_BxV.shape[-1], dtype=counts_BxV.dtype)
    ys.append(y)
  return jnp.stack(ys, 1), counts_BxV


def push_forward_step(model, params, tok_BxT, n_new_B, cache, u_BxK, tau_B, mode: str = "argmax", counts_BxV=None,
                      lam=0.0, u_read_BxK=None):
  """One cached push-forward step and its readout: the K hint logits and the tokens read from them.

  A token-feedback model (`ModelConfig.feedback_layers` > 0) reads each slot inside the step, since slot i's token
  is an input of hint i + 1; the readout (`readout`, penalty included) is the same either way.

  Args:
    model: the `KForcingLM`.
    params: its inner params dict.
    tok_BxT, n_new_B, cache: as in `KForcingLM.decode`.
    u_BxK: the hints' noises.
    tau_B: the noise encoder's input.
    mode: "argmax" | "sample".
    counts_BxV, lam: frequency penalty state and weight (None: no penalty).
    u_read_BxK: the uniforms the readout inverts (default u_BxK).
  Returns:
    (int32 tokens [B, K], float32 hint logits [B, K, V], counts or None, new cache).
  """
  u_read = u_BxK if u_read_BxK is None else u_read_BxK
  picked = {"y": [], "counts": counts_BxV}

  def pick(i, logits_BxV):
    y, picked["counts"] = readout(logits_BxV[:, None], picked["counts"], lam, u_read[:, i:i + 1], mode)
    picked["y"].append(y[:, 0])
    return y[:, 0]

  _, logits, cache = model.apply({"params": params}, tok_BxT, n_new_B, cache, u_BxK, tau_B, pick=pick,
                                 method=model.decode)
  if picked["y"]:
    return jnp.stack(picked["y"], 1), logits.astype(jnp.float32), picked["counts"], cache
  y, counts = readout(logits, counts_BxV, lam, u_read, mode)
  return y, logits.astype(jnp.float32), counts, cache


def truncate_at_eos(tok_BxN, eos_id: int, pad_id: int):
  """Fixed-length outputs -> (tokens with everything from the first EOS on set to pad, lengths before EOS).

  Args:
    tok_BxN: generated tokens.
    eos_id: end-of-sequence id, or -1 (no truncation).
    pad_id: filler for positions at and after EOS.
  Returns:
    (int32 [B, N] tokens, int32 [B] lengths).
  """
  tok = jnp.asarray(tok_BxN)
  n = tok.shape[1]
  if eos_id is None or eos_id < 0:
    return tok, jnp.full((tok.shape[0],), n, jnp.int32)
  is_eos = tok == eos_id
  length = jnp.where(is_eos.any(1), jnp.argmax(is_eos, 1), n).astype(jnp.int32)
  keep = jnp.arange(n)[None, :] < length[:, None]
  return jnp.where(keep, tok, max(pad_id, 0)), length


def check_request(cfg: ModelConfig, prompt_lens: Sequence[int], num_tokens: int, k=None, temperature=1.0,
                  freq_penalty=0.0) -> None:
  """Validates one generation request; raises ValueError with one clear line.

  Args:
    cfg: the decoding model's config.
    prompt_lens: token count of every prompt.
    num_tokens: new tokens per prompt.
    k: tokens per step (None: AR).
    temperature: sampling temperature (AR) / tau (push-forward).
    freq_penalty: push-forward frequency penalty.
  """
  if len(prompt_lens) == 0:
    raise ValueError("batch size must be >= 1 (no prompts given)")
  if min(prompt_lens) < 1:
    raise ValueError("empty prompt: every prompt needs at least one token")
  if num_tokens < 1:
    raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
  longest = max(prompt_lens)
  if longest + num_tokens > cfg.max_len:
    raise ValueError(f"prompt of {longest} tokens + {num_tokens} new tokens exceeds max_len={cfg.max_len}")
  t = float(temperature)
  if not t > 0 or math.isnan(t) or math.isinf(t):
    raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
  fp = float(freq_penalty)
  if math.isnan(fp) or fp < 0:
    raise ValueError(f"freq_penalty must be >= 0, got {freq_penalty}")
  if k is not None:
    if not cfg.is_pflm:
      raise ValueError(f"K={k} asked of an AR model (k_max=0); use k=None for AR sampling")
    if not 1 <= int(k) <= cfg.k_max:
      raise ValueError(f"K={k} outside 1..{cfg.k_max} (the model was trained for k={cfg.k_max})")
