"""How a push-forward LM's hint logits become tokens.

  "argmax"  the reference: y_i = argmax of hint i's logits (the push-forward map is deterministic given u).
  "sample"  y_i = the sorted inverse CDF of hint i's own softmax at u_i (`inverse_cdf.sample`). With
            `ModelConfig.hint_noise == "previous"` hint i never sees u_i, so y_i is an exact draw from q_i, the
            distribution the student reports: what speculative decoding and the KL loss rely on.
"""
import jax
import jax.numpy as jnp

from kforcing_jax.distill import inverse_cdf

READOUTS = ("argmax", "sample")


def check(readout: str) -> str:
  """Returns `readout` if it is a known readout, else raises ValueError with the known names."""
  if readout not in READOUTS:
    raise ValueError(f"unknown readout {readout!r}; expected one of {READOUTS}")
  return readout


def tokens(logits_xKxV, u_xK, readout: str):
  """Tokens of hint logits under a readout.

  Args:
    logits_xKxV: hint logits [..., K, V].
    u_xK: the slots' uniforms [..., K] (read by "sample" only).
    readout: "argmax" | "sample".
  Returns:
    int32 tokens [..., K].
  """
  if check(readout) == "argmax":
    return jnp.argmax(logits_xKxV, -1).astype(jnp.int32)
  return inverse_cdf.sample(logits_xKxV, u_xK)


def own_rollout(model, params, ctx_BxW, noise_BxWxK, tau_B, readout: str, **apply_kw):
  """A student's slot logits along its own readout, with those tokens (teacher-forced on data contexts).

  One staircase pass; for a token-feedback model (`ModelConfig.feedback_layers` > 0) K passes, pass j feeding
  back the tokens of slots < j fixed by the passes before it, so the result is what its decoder computes.

  Args:
    model: the student `KForcingLM`.
    params: its inner params dict.
    ctx_BxW, noise_BxWxK, tau_B: as in `KForcingLM.staircase`.
    readout: "argmax" | "sample".
    **apply_kw: passed to `apply` (deterministic, rngs).
  Returns:
    (logits [B, W, K, V], int32 tokens [B, W, K]).
  """
  apply = lambda y: model.apply({"params": params}, ctx_BxW, noise_BxWxK, tau_B, method=model.staircase,
                                feedback_BxWxK=y, **apply_kw)
  k = noise_BxWxK.shape[-1]
  passes = k if model.cfg.feedback_layers and k > 1 else 1
  y = jnp.zeros(noise_BxWxK.shape, jnp.int32)
  for _ in range(passes):
    logits = apply(y)
    y = jax.lax.stop_gradient(tokens(logits, noise_BxWxK, readout))
  return logits, y
