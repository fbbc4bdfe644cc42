"""Autoregressive decoding with a preallocated KV cache: prefill, then `lax.scan` over one-token steps (the cache is
grown between segments of the loop, `common.scan_growing_cache`).

Samplers (all read the noise u_j of the token's absolute position j, see `common`):
  "icdf"       the project's inverse CDF (vocabulary sorted by probability; `distill.inverse_cdf.sample`). This is
               what the teacher targets and lossless verification use, so it is the AR reference for fidelity.
               Exact and sort-free: a bisection on the probability threshold (docs/benchmarks.md has its cost).
  "vocab_cdf"  inverse CDF in vocabulary-id order (cumsum + compare, no sort): an exact sample of the same
               distribution at the cost of the reference's `torch.multinomial`. Used as the fair speed baseline.
  "greedy"     argmax (ignores u).
"""
import functools

import jax
import jax.numpy as jnp

from kforcing_jax.decoding.common import (gather_positions, loop_cache_slots, position_noise,
                                          scan_growing_cache)
from kforcing_jax.distill import inverse_cdf
from kforcing_jax.models.config import ModelConfig
from kforcing_jax.models.transformer import KForcingLM, init_cache

SAMPLERS = ("icdf", "vocab_cdf", "greedy")


def sample_token(logits_BxV, u_B, temperature, sampler: str = "icdf"):
  """One token per row from next-token logits and the row's noise.

  Args:
    logits_BxV: next-token logits.
    u_B: uniforms in [0, 1).
    temperature: softmax temperature (scalar).
    sampler: "icdf" | "vocab_cdf" | "greedy".
  Returns:
    int32 [B] tokens.
  """
  if sampler == "icdf":
    return inverse_cdf.sample(logits_BxV, u_B, temperature)
  if sampler == "vocab_cdf":
    cdf = jnp.cumsum(jax.nn.softmax(logits_BxV.astype(jnp.float32) / temperature, -1), -1)
    rank = jnp.sum(cdf <= u_B[:, None], -1)
    return jnp.minimum(rank, logits_BxV.shape[-1] - 1).astype(jnp.int32)
  if sampler == "greedy":
    return jnp.argmax(logits_BxV, -1).astype(jnp.int32)
  raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")


def prefill(cfg: ModelConfig, params, prompt_BxP, plen_B, u_BxS, temperature, *, num_tokens: int,
            sampler: str = "icdf"):
  """Writes the prompts into a fresh cache and samples each row's first new token (at position plen_b).

  Args:
    cfg: model config (AR teacher, or a push-forward LM's AR path).
    params: inner parameter dict.
    prompt_BxP: right-padded prompts.
    plen_B: prompt lengths (>= 1).
    u_BxS: noise by absolute position.
    temperature: sampling temperature.
    num_tokens: new tokens per row (sizes the cache).
    sampler: see the module docstring.
  Returns:
    (cache, first tokens [B]).
  """
  model = KForcingLM(cfg)
  b, p = prompt_BxP.shape
  cache = init_cache(cfg, b, loop_cache_slots(p, 1, num_tokens - 1))  # `steps` grows it as the loop needs
  logits, _, cache = model.apply({"params": params}, prompt_BxP, plen_B, cache, ctx_logits="last",
                                 method=model.decode)
  tok = sample_token(logits, gather_positions(u_BxS, plen_B[:, None])[:, 0], temperature, sampler)
  return cache, tok


def steps(cfg: ModelConfig, params, cache, tok_B, u_BxS, temperature, *, num_tokens: int, sampler: str = "icdf",
          unroll: int = 1):
  """The remaining num_tokens - 1 steps as one `lax.scan`: feed the last token, sample the next.

  Args:
    cfg, params: the model.
    cache: from `prefill`.
    tok_B: the first new token of each row.
    u_BxS, temperature, sampler: as in `prefill`.
    num_tokens: total new tokens per row.
    unroll: `lax.scan` unroll factor.
  Returns:
    (int32 tokens [B, num_tokens], final cache).
  """
  model = KForcingLM(cfg)
  ones = jnp.ones_like(tok_B)

  def step(carry, _):
    logits, _, cache = model.apply({"params": params}, carry["tok"][:, None], ones, carry["cache"],
                                   ctx_logits="last", method=model.decode)
    # After writing the token at position len-1, the logits predict position len.
    nxt = sample_token(logits, gather_positions(u_BxS, cache["len"][:, None])[:, 0], temperature, sampler)
    return {"cache": cache, "tok": nxt}, nxt

  out, rest = scan_growing_cache(step, {"cache": cache, "tok": tok_B}, num_tokens - 1, 1, unroll)
  if rest is None:
    return tok_B[:, None], out["cache"]
  return jnp.concatenate([tok_B[:, None], rest.T], 1), out["cache"]


def noise_length(prompt_width: int, num_tokens: int) -> int:
  return prompt_width + num_tokens + 1


@functools.lru_cache(maxsize=64)
def decoder(cfg: ModelConfig, num_tokens: int, sampler: str = "icdf", unroll: int = 1):
  """One jitted AR decoder (prefill + scan) per (config, num_tokens, sampler); retraces per (batch, width).

  Args:
    cfg: model config.
    num_tokens: new tokens per row.
    sampler: "icdf" | "vocab_cdf" | "greedy".
    unroll: scan unroll.
  Returns:
    fn(params, prompt_BxP, plen_B, seed, temperature, row_offset) -> int32 [B, num_tokens].
  """
  def run(params, prompt_BxP, plen_B, seed, temperature, row_offset):
    b, p = prompt_BxP.shape
    u = position_noise(seed, b, noise_length(p, num_tokens), row_offset)
    cache, tok = prefill(cfg, params, prompt_BxP, plen_B, u, temperature, num_tokens=num_tokens, sampler=sampler)
    return steps(cfg, params, cache, tok, u, temperature, num_tokens=num_tokens, sampler=sampler,
                 unroll=unroll)[0]

  return jax.jit(run)


@functools.lru_cache(maxsize=64)
def phases(cfg: ModelConfig, num_tokens: int, sampler: str = "icdf", unroll: int = 1):
  """The decoder as two jitted phases (for timing prefill apart from the step loop).

  The loop grows the cache (`common.scan_growing_cache`), so its output cache cannot alias the prefill cache and
  nothing is donated: the first scan copies the small prefill cache into its loop buffer once, and from there the
  cache is updated in place.

  Returns:
    (prefill_fn(params, prompt, plen, u, temperature) -> (cache, tok),
     steps_fn(params, cache, tok, u, temperature) -> (tokens, cache)).
  """
  pre = jax.jit(functools.partial(prefill, cfg, num_tokens=num_tokens, sampler=sampler))
  run = jax.jit(functools.partial(steps, cfg, num_tokens=num_tokens, sampler=sampler, unroll=unroll))
  return pre, run
