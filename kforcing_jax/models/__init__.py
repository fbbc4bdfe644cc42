"""Flax linen models: the shared backbone, the AR teacher and the push-forward LM."""
from kforcing_jax.models.config import ModelConfig
from kforcing_jax.models.params import abstract_params, check_params, init_params
from kforcing_jax.models.transformer import KForcingLM, init_cache

__all__ = ["ModelConfig", "KForcingLM", "init_cache", "abstract_params", "init_params", "check_params"]
