"""Flax linen models: the shared backbone, the AR teacher and the push-forward LM."""
from kforcing_jax.models.config import ModelConfig
from kforcing_jax.models.transformer import KForcingLM, init_cache

__all__ = ["ModelConfig", "KForcingLM", "init_cache"]
