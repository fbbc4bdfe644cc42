"""Jitted decoders: AR (`ar`), push-forward (`pflm`), lossless draft-and-verify (`verify`) and exact speculative
sampling (`speculative`), behind one dispatch (`make`, `resolve`; dispatch.py).

Every decoder reads the noise of the token at absolute position j from u[b, j] (`common.position_noise`), so they
agree on what "the same seed" means.
"""
from kforcing_jax.decoding import ar, common, pflm, speculative, verify
from kforcing_jax.decoding.common import check_request, pad_prompts, position_noise, truncate_at_eos
from kforcing_jax.decoding.dispatch import MODES, READOUTS, Decoded, check_scalars, make, resolve

__all__ = ["ar", "pflm", "verify", "speculative", "common", "check_request", "pad_prompts", "position_noise",
           "truncate_at_eos", "MODES", "READOUTS", "Decoded", "check_scalars", "make", "resolve"]
