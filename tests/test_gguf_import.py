"""`convert --gguf`: tiny GGUF files written with gguf.GGUFWriter the way llama.cpp writes them (Q/K permuted,
quantized matrices) import to the model they were written from; the tokenizer is rebuilt from the metadata."""
import jax.numpy as jnp
import numpy as np
import pytest

import kforcing_jax
import pretrained_helpers as ph
from kforcing_jax import pretrained
from kforcing_jax.data import pretrained_tokenizer
from kforcing_jax.models import KForcingLM, gguf_import, hf_import
from test_hf_convert import run_convert

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
TOKENS = [[1, 5, 9, 3, 17, 2, 44, 8, 63, 0, 12, 7]]


def _logits(cfg, params):
  return np.asarray(KForcingLM(cfg).apply({"params": params}, jnp.asarray(TOKENS)))


def _float_model(family):
  hf_cfg, tensors, golden = ph.fixture(family)
  cfg = hf_import.config_from_hf(hf_cfg, max_len=32)
  return cfg, hf_import.params_from_hf(tensors, cfg, family), golden


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_f32_gguf_is_exactly_the_float_model(tmp_path, family):
  cfg, params, golden = _float_model(family)
  got_cfg, got, _, info = gguf_import.load(ph.write_gguf(str(tmp_path / "m.gguf"), family), max_len=32)
  assert got_cfg == cfg and info["tensor_types"] == {"F32": len(ph.gguf_tensors(family)[1])}
  np.testing.assert_equal(got, params)  # the Q/K un-permutation and the renaming are exact
  assert float(np.max(np.abs(_logits(got_cfg, got) - golden))) < 1e-4


def _dequantized_reference(family, qtype):
  # What the file holds, dequantized by gguf itself, in the HF layout: the float model each quantized file means.
  cfg, _, _ = _float_model(family)
  hf_cfg, tensors, _ = ph.fixture(family)
  written = ph.gguf_tensors(family, qtype)[1]
  ref = {}
  for name, w in tensors.items():
    data, t = written[ph.to_gguf_name(name)]
    x = np.asarray(gguf.quants.dequantize(data, t), np.float32).reshape(w.shape)
    if family == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
      heads = hf_cfg["num_attention_heads"] if "q_proj" in name else hf_cfg["num_key_value_heads"]
      x = gguf_import._unpermute(x, heads)  # pylint: disable=protected-access
    ref[name] = x
  return cfg, hf_import.params_from_hf(ref, cfg, family)


@pytest.mark.parametrize("qtype,tol", [(Q.Q8_0, 0.1), (Q.Q4_0, 1.0), (Q.Q4_1, 1.0)])
def test_quantized_gguf_means_its_dequantized_weights(tmp_path, qtype, tol):
  cfg, want = _dequantized_reference("llama", qtype)
  got_cfg, got, _, info = gguf_import.load(ph.write_gguf(str(tmp_path / "q.gguf"), qtype=qtype), max_len=32)
  assert info["tensor_types"][qtype.name] == 14 and info["tensor_types"]["F16"] == 2
  np.testing.assert_equal(got, want)
  # And close to the float model it was quantized from (these random N(0, 0.3) weights are hard on 4 bits).
  err = float(np.max(np.abs(_logits(got_cfg, got) - ph.fixture("llama")[2])))
  assert err < tol, err


def test_k_quant_tensor_dequantizes(tmp_path):
  # gguf can only write K-quants as raw blocks; a Q6_K embedding (256-wide blocks) of a 256-wide model is read.
  blocks = np.random.default_rng(0).integers(0, 255, (4, gguf.GGML_QUANT_SIZES[Q.Q6_K][1]), dtype=np.uint8)
  blocks[:, -2:] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)  # the block scale d: finite
  x = gguf.quants.dequantize(blocks, Q.Q6_K)
  assert x.shape == (4, 256) and np.isfinite(x).all()
  w = gguf.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
  w.add_tensor("token_embd.weight", blocks, raw_dtype=Q.Q6_K)
  w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
  tensors = gguf_import.dequantized_tensors(gguf_import.open_reader(str(tmp_path / "k.gguf")), "llama", 1, 1)
  np.testing.assert_array_equal(tensors["embed_tokens.weight"], x)


def test_cli_converts_gguf_with_rebuilt_tokenizer(tmp_path, capsys):
  path = ph.write_gguf(str(tmp_path / "m.gguf"), qtype=Q.Q8_0)
  code, err = run_convert(capsys, "--gguf", path, "--workdir", str(tmp_path / "out"))
  assert code is None, err
  model = kforcing_jax.load(str(tmp_path / "out"))
  assert model.meta["gguf"]["tensor_types"]["Q8_0"] == 14 and model.config.max_len == 32
  tok, ref = model.tokenizer, ph.tiny_tokenizer()
  assert (tok.kind, tok.bos_id, tok.eos_id, tok.pad_id) == ("pretrained", -1, 2, 2)  # add_bos_token false
  for text in ph.TEXTS + ["<|im_start|>user\nthe cat<|im_end|>\n"]:
    assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids and tok.decode(tok.encode(text)) == text
  assert tok.apply_chat_template([{"role": "user", "content": "hi"}]).endswith("<|im_start|>assistant\n")
  np.testing.assert_equal(model.params, _dequantized_reference("llama", Q.Q8_0)[1])


def test_tokenizer_rebuild_rejects_what_it_cannot_restate():
  tokens, merges, types = ph.tiny_vocab()
  meta = {"model": "gpt2", "pre": "smollm", "tokens": tokens, "token_type": types, "merges": merges, "eos_id": 2}
  assert pretrained_tokenizer.from_gguf(meta, 64).vocab_size == 64
  for change, needle in [({"model": "llama"}, "unsupported tokenizer.ggml.model 'llama'"),
                         ({"pre": "qwen2"}, "unsupported tokenizer.ggml.pre 'qwen2'"),
                         ({"merges": merges + ["zz q"]}, "merge 'zz q' of unknown tokens"),
                         ({"tokens": tokens[:-1] + ["a"]}, "duplicate")]:
    with pytest.raises(pretrained_tokenizer.TokenizerError, match=needle):
      pretrained_tokenizer.from_gguf({**meta, **change}, 64)


def _bad_files(tmp_path):
  d = str(tmp_path)
  garbage = tmp_path / "garbage.gguf"
  garbage.write_bytes(np.random.default_rng(0).bytes(2048))
  return [
      (str(tmp_path / "nope.gguf"), "no such GGUF file"),
      (str(garbage), "is not a readable GGUF file"),
      (ph.write_gguf(d + "/arch.gguf", arch="falcon"), "unsupported GGUF architecture 'falcon'"),
      (ph.write_gguf(d + "/miss.gguf", drop=("blk.1.ffn_up.weight",)), "tensor blk.1.ffn_up.weight missing"),
      (ph.write_gguf(d + "/shape.gguf", reshape={"blk.0.attn_v.weight": (32, 16)}),
       "tensor blk.0.attn_v.weight has shape (32, 16), expected (16, 32)"),
      (ph.write_gguf(d + "/vocab.gguf", vocab_extra=3), "tokenizer.ggml.tokens has 67 tokens but the model's"),
      (ph.write_gguf(d + "/pre.gguf", pre="qwen2"), "unsupported tokenizer.ggml.pre"),
  ]


def test_bad_files_are_one_line_exit_2_nothing_written(tmp_path, capsys):
  out = tmp_path / "out"
  for path, needle in _bad_files(tmp_path):
    code, err = run_convert(capsys, "--gguf", path, "--workdir", str(out))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, (path, err)
    assert not out.exists(), path


def test_a_tokenizer_json_replaces_the_metadata(tmp_path):
  path = ph.write_gguf(str(tmp_path / "m.gguf"), pre="qwen2")  # a pre-tokenizer that cannot be restated
  (tmp_path / "tok").mkdir()
  ph.tiny_tokenizer().save(str(tmp_path / "tok" / "tokenizer.json"))
  meta = pretrained.convert_gguf(path, str(tmp_path / "out"), tokenizer=str(tmp_path / "tok" / "tokenizer.json"))
  assert meta["tokenizer"]["kind"] == "pretrained" and meta["format"] == "gguf"
