"""Pallas kernels for K-Forcing attention: the staircase training pattern and cached decode.

`staircase.staircase_attention` and `decode.decode_attention` are drop-in replacements for the XLA paths in
`kforcing_jax.models.attention` (selected by `ModelConfig.attention_impl = "pallas"`). `backend` picks the Pallas
lowering from `jax.default_backend()`: Mosaic on TPU, Triton on GPU, interpret mode on CPU (tests only).
"""
