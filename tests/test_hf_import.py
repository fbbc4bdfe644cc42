"""HF import against golden logits written by transformers (tests/fixtures/make_hf_fixtures.py)."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from kforcing_jax.models import KForcingLM, check_params
from kforcing_jax.models import hf_import

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
TOKENS = [[1, 5, 9, 3, 17, 2, 44, 8, 63, 0, 12, 7]]


def _load(family):
  d = os.path.join(FIX, f"hf_{family}")
  hf = json.load(open(os.path.join(d, "config.json")))
  cfg = hf_import.config_from_hf(hf, max_len=32)
  return cfg, load_file(os.path.join(d, "model.safetensors")), np.load(os.path.join(d, "logits.npy"))


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_logits_equal_transformers(family):
  cfg, tensors, want = _load(family)
  params = hf_import.params_from_hf(tensors, cfg, family)
  check_params(cfg, params)
  got = KForcingLM(cfg).apply({"params": params}, jnp.asarray(TOKENS))
  err = float(np.max(np.abs(np.asarray(got) - want)))
  print(f"{family}: max |logit diff| vs transformers = {err:.2e}")
  assert err < 1e-4


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_bad_tensors_named(family):
  cfg, tensors, _ = _load(family)
  name = sorted(k for k in tensors if "layers.1." in k or "h.1." in k)[0]
  with pytest.raises(hf_import.HFImportError, match=name.removeprefix("transformer.").removeprefix("model.").replace(".", r"\.")):
    hf_import.params_from_hf({k: v for k, v in tensors.items() if k != name}, cfg, family)
  with pytest.raises(hf_import.HFImportError, match="shape"):
    hf_import.params_from_hf({**tensors, name: tensors[name][..., :1]}, cfg, family)
  with pytest.raises(hf_import.HFImportError, match="not used"):
    hf_import.params_from_hf({**tensors, "extra.weight": np.zeros(3, np.float32)}, cfg, family)


def test_unsupported_model_type():
  with pytest.raises(hf_import.HFImportError, match="unsupported model_type"):
    hf_import.config_from_hf({"model_type": "bert"})
