"""Export back to a Hugging Face folder: fixture -> our params -> HF tensors is the identity; the CLI round trip."""
import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

import kforcing_jax
import pretrained_helpers as ph
from helpers import tiny_config
from kforcing_jax import pretrained
import flax.linen as nn
from kforcing_jax.models import abstract_params, hf_export, hf_import
from kforcing_jax.models.config import ModelConfig
from test_hf_convert import run_convert


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_export_inverts_the_import(family):
  hf_cfg, tensors, _ = ph.fixture(family)
  cfg = hf_import.config_from_hf(hf_cfg)
  cfg_back, tensors_back = hf_export.to_hf(hf_import.params_from_hf(tensors, cfg, family), cfg)
  assert hf_import.config_from_hf(cfg_back) == cfg and cfg_back["model_type"] == family
  assert sorted(tensors_back) == sorted(tensors)
  for name, w in tensors.items():
    np.testing.assert_array_equal(tensors_back[name], w, err_msg=name)


def test_qwen3_and_biased_llama_round_trip():
  for family, kw in (("qwen3", dict(attn_head_dim=16)), ("llama", dict(qkv_bias=True, attn_out_bias=True))):
    cfg = ModelConfig.preset(family, vocab_size=40, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                             mlp_dim=48, max_len=16, **kw)
    abstract = nn.unbox(abstract_params(cfg))["params"]  # shapes only: no init run, random numpy values
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), abstract)
    hf_cfg, tensors = hf_export.to_hf(params, cfg)
    assert hf_export.family_of(cfg) == family
    back = hf_import.params_from_hf(tensors, hf_import.config_from_hf(hf_cfg), family)
    np.testing.assert_equal(back, jax.tree.map(np.asarray, params))


def test_reference_architecture_has_no_hf_form():
  with pytest.raises(hf_export.HFExportError, match="no Hugging Face family"):
    hf_export.family_of(tiny_config(k_max=0))
  with pytest.raises(hf_export.HFExportError, match="mask_index"):
    hf_export.family_of(ModelConfig.preset("llama", vocab_size=61, d_model=32, num_heads=4, mask_index=5))


def test_cli_round_trip(tmp_path, capsys):
  src = ph.hf_dir(tmp_path, "llama", {"eos_token": "<|im_end|>", "chat_template": ph.CHAT_TEMPLATE})
  pretrained.convert_hf_dir(src, str(tmp_path / "w"))
  code, err = run_convert(capsys, "--workdir", str(tmp_path / "w"), "--to_hf_dir", str(tmp_path / "hf"))
  assert code is None, err
  assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors", "tokenizer.json",
                                                 "tokenizer_config.json"]
  want = load_file(os.path.join(src, "model.safetensors"))
  got = load_file(str(tmp_path / "hf" / "model.safetensors"))
  assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)
  assert json.load(open(tmp_path / "hf" / "tokenizer_config.json"))["chat_template"] == ph.CHAT_TEMPLATE
  pretrained.convert_hf_dir(str(tmp_path / "hf"), str(tmp_path / "w2"))
  a, b = kforcing_jax.load(str(tmp_path / "w")), kforcing_jax.load(str(tmp_path / "w2"))
  assert a.config == b.config and a.tokenizer.spec == b.tokenizer.spec
  code, err = run_convert(capsys, "--workdir", str(tmp_path / "w"), "--to_hf_dir", str(tmp_path / "hf"))
  assert code == 2 and "not empty" in err and err.count("\n") == 1
  code, err = run_convert(capsys, "--workdir", str(tmp_path / "w"), "--to_hf_dir", str(tmp_path / "x"),
                          "--kind", "ar")
  assert code == 2 and "--kind does not apply" in err and not (tmp_path / "x").exists()
