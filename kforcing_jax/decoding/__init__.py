"""Jitted decoders: AR (`ar`), push-forward (`pflm`) and lossless draft-and-verify (`verify`).

Every decoder reads the noise of the token at absolute position j from u[b, j] (`common.position_noise`), so the
three agree on what "the same seed" means.
"""
from kforcing_jax.decoding import ar, common, pflm, verify
from kforcing_jax.decoding.common import check_request, pad_prompts, position_noise, truncate_at_eos

__all__ = ["ar", "pflm", "verify", "common", "check_request", "pad_prompts", "position_noise", "truncate_at_eos"]
