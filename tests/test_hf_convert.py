"""`convert --hf_dir`: a Hugging Face folder -> a loadable workdir (golden logits, tokenizer, chat template), and
every bad input is one error line, exit 2, nothing written."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

import kforcing_jax
import pretrained_helpers as ph
from helpers import run_convert
from kforcing_jax import pretrained
from kforcing_jax.models import KForcingLM
from kforcing_jax.models.torch_import import ConversionError

TOKENS = [[1, 5, 9, 3, 17, 2, 44, 8, 63, 0, 12, 7]]


def _logits(model):
  return np.asarray(KForcingLM(model.config).apply({"params": model.params}, jnp.asarray(TOKENS)))


def test_llama_folder_converts_with_tokenizer_and_chat_template(tmp_path, capsys):
  src = ph.hf_dir(tmp_path, "llama", {"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
                                      "add_bos_token": True, "chat_template": ph.CHAT_TEMPLATE})
  code, err = run_convert(capsys, "--hf_dir", src, "--workdir", str(tmp_path / "out"), "--max_len", "32")
  assert code is None, err
  model = kforcing_jax.load(str(tmp_path / "out"))
  assert model.config.num_kv_heads == 2 and not model.config.tie_embeddings and model.config.max_len == 32
  assert float(np.max(np.abs(_logits(model) - ph.fixture("llama")[2]))) < 1e-4
  tok = model.tokenizer
  assert (tok.kind, tok.bos_id, tok.eos_id, tok.pad_id, tok.vocab_size) == ("pretrained", 1, 2, 2, 64)
  ref = ph.tiny_tokenizer()
  for text in ph.TEXTS:
    assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids and tok.decode(tok.encode(text)) == text
  prompt = tok.apply_chat_template([{"role": "user", "content": "the cat"}])
  assert prompt == "<|im_start|>user\nthe cat<|im_end|>\n<|im_start|>assistant\n"
  assert tok.encode(prompt)[:1] == [1]  # the special token is one id, not split into characters
  out = model.generate(["the cat"], num_tokens=4, k=0, temperature=0.5)
  assert len(out) == 1 and isinstance(out[0], str)


def test_gpt2_folder_without_tokenizer_config(tmp_path):
  src = ph.hf_dir(tmp_path, "gpt2")
  # Without tokenizer_config.json the eos comes from config.json: 50256, outside this tiny vocabulary.
  with pytest.raises(ConversionError, match="eos id 50256 is outside the tokenizer's 64 ids"):
    pretrained.convert_hf_dir(src, str(tmp_path / "out"))
  with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
    json.dump({"eos_token": "<|endoftext|>"}, f)
  meta = pretrained.convert_hf_dir(src, str(tmp_path / "out"))
  assert meta["family"] == "gpt2" and meta["model"]["max_len"] == 32  # n_positions caps the default
  model = kforcing_jax.load(str(tmp_path / "out"))
  assert (model.tokenizer.bos_id, model.tokenizer.eos_id) == (-1, 0)  # the tokenizer adds no bos: none prepended
  assert float(np.max(np.abs(_logits(model) - ph.fixture("gpt2")[2]))) < 1e-4


def _bad_folders(tmp_path):
  """(name, folder or args builder, expected message) of every bad-input case."""
  cases = []
  empty = tmp_path / "empty"
  empty.mkdir()
  cases.append(("no config", ["--hf_dir", str(empty)], "no config.json"))
  no_w = ph.hf_dir(tmp_path / "now", "llama")
  os.remove(os.path.join(no_w, "model.safetensors"))
  cases.append(("no weights", ["--hf_dir", no_w], "no *.safetensors"))
  bert = ph.hf_dir(tmp_path / "bert", "llama")
  cfg = json.load(open(os.path.join(bert, "config.json")))
  json.dump({**cfg, "model_type": "bert"}, open(os.path.join(bert, "config.json"), "w"))
  cases.append(("model type", ["--hf_dir", bert], "unsupported model_type 'bert'"))
  _, tensors, _ = ph.fixture("llama")
  missing = ph.hf_dir(tmp_path / "missing", "llama")
  ph.rewrite_weights(missing, {k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"})
  cases.append(("missing tensor", ["--hf_dir", missing], "tensor layers.1.mlp.up_proj.weight missing"))
  shape = ph.hf_dir(tmp_path / "shape", "llama")
  ph.rewrite_weights(shape, {**tensors, "model.layers.0.self_attn.k_proj.weight": np.zeros((8, 32), np.float32)})
  cases.append(("wrong shape", ["--hf_dir", shape], "tensor layers.0.self_attn.k_proj.weight has shape (8, 32)"))
  big = ph.hf_dir(tmp_path / "big", "llama", extra_ids=6)
  cases.append(("vocab", ["--hf_dir", big], "the tokenizer has 70 ids but the model's vocabulary is 64"))
  no_tok = ph.hf_dir(tmp_path / "notok", "llama")
  os.remove(os.path.join(no_tok, "tokenizer.json"))
  cases.append(("no tokenizer", ["--hf_dir", no_tok], "no tokenizer.json"))
  badcfg = ph.hf_dir(tmp_path / "badcfg", "llama", {"eos_token": "<|nope|>"})
  cases.append(("special", ["--hf_dir", badcfg], "eos_token '<|nope|>' is not in"))
  good = ph.hf_dir(tmp_path / "good", "llama")
  cases.append(("kind flag", ["--hf_dir", good, "--kind", "ar"], "--kind applies to --reference_ckpt only"))
  cases.append(("two sources", ["--hf_dir", good, "--gguf", "x.gguf"], "give only one of"))
  cases.append(("tokenizer flag", ["--hf_dir", good, "--tokenizer", "gpt2"], "expected an existing tokenizer.json"))
  return cases, good


def test_bad_folders_are_one_line_exit_2_nothing_written(tmp_path, capsys):
  cases, good = _bad_folders(tmp_path)
  out = tmp_path / "out"
  for name, args, needle in cases:
    code, err = run_convert(capsys, *args, "--workdir", str(out))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, (name, err)
    assert not out.exists(), name
  full = tmp_path / "full"
  full.mkdir()
  (full / "keep.txt").write_text("x")
  code, err = run_convert(capsys, "--hf_dir", good, "--workdir", str(full))
  assert code == 2 and "not empty" in err and os.listdir(full) == ["keep.txt"]


def test_tokenizer_override_and_sharded_weights(tmp_path):
  # Weights split over two files (as HF shards them) and another tokenizer.json given explicitly.
  src = ph.hf_dir(tmp_path, "qwen2")
  _, tensors, want = ph.fixture("qwen2")
  names = sorted(tensors)
  os.remove(os.path.join(src, "model.safetensors"))
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2:])):
    save_file({k: tensors[k] for k in part}, os.path.join(src, f"model-0000{i + 1}-of-00002.safetensors"))
  os.makedirs(tmp_path / "tok")
  ph.tiny_tokenizer().save(str(tmp_path / "tok" / "tokenizer.json"))
  os.remove(os.path.join(src, "tokenizer.json"))
  with pytest.raises(ConversionError, match="no tokenizer.json"):
    pretrained.convert_hf_dir(src, str(tmp_path / "out"))
  pretrained.convert_hf_dir(src, str(tmp_path / "out"), tokenizer=str(tmp_path / "tok" / "tokenizer.json"))
  model = kforcing_jax.load(str(tmp_path / "out"))
  assert model.config.tie_embeddings and model.config.qkv_bias
  assert float(np.max(np.abs(_logits(model) - want))) < 1e-4


def test_bfloat16_weights_are_read_as_float32(tmp_path):
  import ml_dtypes  # pylint: disable=g-import-not-at-top  (a jax dependency)
  src = ph.hf_dir(tmp_path, "llama")
  _, tensors, _ = ph.fixture("llama")
  ph.rewrite_weights(src, {k: v.astype(ml_dtypes.bfloat16) for k, v in tensors.items()})
  pretrained.convert_hf_dir(src, str(tmp_path / "out"))
  got = kforcing_jax.load(str(tmp_path / "out")).params["embed"]["embedding"]
  want = tensors["model.embed_tokens.weight"].astype(ml_dtypes.bfloat16).astype(np.float32)
  assert got.dtype == np.float32 and np.array_equal(np.asarray(got), want) and not np.array_equal(want, tensors[
      "model.embed_tokens.weight"])
