"""Push-forward decoding: K tokens per model call, prefill then `lax.scan` over steps with a preallocated cache
(grown between segments of the loop, `common.scan_growing_cache`).

Each step feeds the K tokens emitted by the previous step as ordinary context tokens plus K fresh hints (2K
queries; the first step feeds the prompt instead). Hint i of a step predicts the token at absolute position j and
reads the noise u_j (`common.position_noise`), so K = 1 with the same seed uses the same u as AR sampling.
Readout (`common.readout`) is argmax per hint (the reference: the push-forward map is deterministic given u) or
"sample" (hint i's token is the inverse CDF of its own softmax at u_j), optionally with the sequential frequency
penalty. `tau` is the noise encoder's input (the reference always decodes at tau = 1); it is not a softmax
temperature: the logits are not rescaled, since the map already encodes the sampling distribution.
"""
import functools
import math

import jax
import jax.numpy as jnp

from kforcing_jax.decoding.common import (gather_positions, loop_cache_slots, position_noise, push_forward_step,
                                          scan_growing_cache)
from kforcing_jax.models.config import ModelConfig
from kforcing_jax.models.transformer import KForcingLM, init_cache


def num_steps(num_tokens: int, k: int) -> int:
  return int(math.ceil(num_tokens / k))


def noise_length(prompt_width: int, num_tokens: int, k: int) -> int:
  return prompt_width + num_steps(num_tokens, k) * k + k


def _step(model, params, tok_BxT, n_new_B, cache, u_BxS, tau_B, counts, lam, k, mode):
  # Hints predict the K positions right after the row's last real token.
  pos = (cache["len"] + n_new_B)[:, None] + jnp.arange(k)[None, :]
  y, _, counts, cache = push_forward_step(model, params, tok_BxT, n_new_B, cache, gather_positions(u_BxS, pos),
                                          tau_B, mode, counts, lam)
  return y, counts, cache


def prefill(cfg: ModelConfig, params, prompt_BxP, plen_B, u_BxS, tau, freq_penalty=0.0, *, k: int,
            num_tokens: int, penalize: bool = False, readout: str = "argmax"):
  """Writes the prompts and reads the first K tokens from the hints in the same call.

  Args:
    cfg: push-forward LM config (k_max >= k).
    params: inner parameter dict.
    prompt_BxP: right-padded prompts.
    plen_B: prompt lengths (>= 1).
    u_BxS: noise by absolute position.
    tau: the noise encoder's input (scalar).
    freq_penalty: penalty weight (used when `penalize`).
    k: tokens per step.
    num_tokens: new tokens per row (sizes the cache).
    penalize: carry generated-token counts and apply the frequency penalty.
    readout: "argmax" | "sample" (`common.readout`).
  Returns:
    A decode state {"cache", "y": [B, K] tokens, "counts": [B, V] or None}.
  """
  model = KForcingLM(cfg)
  b, p = prompt_BxP.shape
  # `steps` grows the cache as the loop needs.
  cache = init_cache(cfg, b, loop_cache_slots(p, k, num_steps(num_tokens, k) - 1))
  tau_B = jnp.full((b,), tau, jnp.float32)
  counts = jnp.zeros((b, cfg.vocab_size), jnp.float32) if penalize else None
  y, counts, cache = _step(model, params, prompt_BxP, plen_B, cache, u_BxS, tau_B, counts, freq_penalty, k,
                           readout)
  return {"cache": cache, "y": y, "counts": counts}


def steps(cfg: ModelConfig, params, state, u_BxS, tau, freq_penalty=0.0, *, k: int, num_tokens: int,
          unroll: int = 1, readout: str = "argmax"):
  """The remaining ceil(num_tokens / K) - 1 steps as `lax.scan`s over a growing cache (`scan_growing_cache`).

  Args:
    cfg, params: the model.
    state: from `prefill`.
    u_BxS, tau, freq_penalty: as in `prefill`.
    k: tokens per step.
    num_tokens: new tokens per row; the output is cut to this length.
    unroll: `lax.scan` unroll factor.
    readout: as in `prefill`.
  Returns:
    (int32 tokens [B, num_tokens], final state).
  """
  model = KForcingLM(cfg)
  b = state["y"].shape[0]
  tau_B = jnp.full((b,), tau, jnp.float32)
  full = jnp.full((b,), k, jnp.int32)

  def step(carry, _):
    y, counts, cache = _step(model, params, carry["y"], full, carry["cache"], u_BxS, tau_B, carry["counts"],
                             freq_penalty, k, readout)
    return {"cache": cache, "y": y, "counts": counts}, y

  state_out, ys = scan_growing_cache(step, state, num_steps(num_tokens, k) - 1, k, unroll)
  if ys is None:
    return state["y"][:, :num_tokens], state_out
  ys = jnp.transpose(ys, (1, 0, 2)).reshape(b, -1)
  return jnp.concatenate([state["y"], ys], 1)[:, :num_tokens], state_out


@functools.lru_cache(maxsize=64)
def decoder(cfg: ModelConfig, k: int, num_tokens: int, penalize: bool = False, unroll: int = 1,
            readout: str = "argmax"):
  """One jitted push-forward decoder (prefill + scan) per (config, K, num_tokens, readout); retraces per
  (batch, width).

  Returns:
    fn(params, prompt_BxP, plen_B, seed, tau, freq_penalty, row_offset) -> int32 [B, num_tokens].
  """
  def run(params, prompt_BxP, plen_B, seed, tau, freq_penalty, row_offset):
    b, p = prompt_BxP.shape
    u = position_noise(seed, b, noise_length(p, num_tokens, k), row_offset)
    state = prefill(cfg, params, prompt_BxP, plen_B, u, tau, freq_penalty, k=k, num_tokens=num_tokens,
                    penalize=penalize, readout=readout)
    return steps(cfg, params, state, u, tau, freq_penalty, k=k, num_tokens=num_tokens, unroll=unroll,
                 readout=readout)[0]

  return jax.jit(run)


@functools.lru_cache(maxsize=64)
def phases(cfg: ModelConfig, k: int, num_tokens: int, penalize: bool = False, unroll: int = 1,
           readout: str = "argmax"):
  """Prefill and step loop as two jitted functions (nothing donated: the loop grows the cache, see `ar.phases`).

  Returns:
    (prefill_fn(params, prompt, plen, u, tau, freq_penalty) -> state,
     steps_fn(params, state, u, tau, freq_penalty) -> (tokens, state)).
  """
  pre = jax.jit(functools.partial(prefill, cfg, k=k, num_tokens=num_tokens, penalize=penalize, readout=readout))
  run = jax.jit(functools.partial(steps, cfg, k=k, num_tokens=num_tokens, unroll=unroll, readout=readout))
  return pre, run
