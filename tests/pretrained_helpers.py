"""Tiny pretrained-model inputs for the importer tests: a 64-id byte-level BPE, HF folders and GGUF files.

The model weights are the transformers-written golden fixtures (tests/fixtures/hf_*); the GGUF files are written
here with `gguf.GGUFWriter` the way llama.cpp's converter writes them (Q/K rows permuted, optional quantization).
"""
import json
import os
import shutil

import numpy as np
import tokenizers as hf
from safetensors.numpy import load_file, save_file

FIX = os.path.join(os.path.dirname(__file__), "fixtures")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CHARS = list("abcdefghijklmnopqrstuvwxyz") + ["Ġ", ".", ",", "Ċ"] + list("0123456789")
_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"), ("e", "r"), ("a", "n"), ("o", "n"),
           ("Ġ", "s"), ("a", "t"), ("e", "n"), ("Ġ", "c"), ("i", "s"), ("o", "r"), ("e", "s"), ("Ġ", "o"),
           ("Ġ", "w"), ("a", "r"), ("in", "g"), ("Ġ", "f"), ("Ġ", "i")]
CHAT_TEMPLATE = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
TEXTS = ["the cat is in the garden, 42 times.\n", "a stone, then water.", " on and on 7 0 19"]


def tiny_vocab(extra: int = 0):
  """(tokens, merges as "a b" strings, llama.cpp token types) of a 64-id (+ extra) byte-level BPE."""
  tokens = SPECIALS + _CHARS + ["".join(m) for m in _MERGES] + [f"x{i}" for i in range(extra)]
  assert len(tokens) == 64 + extra and len(set(tokens)) == len(tokens)
  return tokens, [" ".join(m) for m in _MERGES], [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))


def tiny_tokenizer(extra: int = 0) -> hf.Tokenizer:
  """The HF tokenizer of `tiny_vocab` (SmolLM2's layout: digits split, then byte-level BPE)."""
  tokens, merges, _ = tiny_vocab(extra)
  tok = hf.Tokenizer(hf.models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                                   merges=[tuple(m.split(" ")) for m in merges]))
  tok.pre_tokenizer = hf.pre_tokenizers.Sequence([hf.pre_tokenizers.Digits(individual_digits=True),
                                                  hf.pre_tokenizers.ByteLevel(add_prefix_space=False)])
  tok.decoder = hf.decoders.ByteLevel()
  tok.add_special_tokens(SPECIALS)
  return tok


def hf_dir(tmp_path, family: str, tokenizer_config=None, extra_ids: int = 0) -> str:
  """A copy of the family's fixture folder with tokenizer.json (+ tokenizer_config.json); returns its path."""
  out = os.path.join(str(tmp_path), f"hf_{family}")
  shutil.copytree(os.path.join(FIX, f"hf_{family}"), out)
  os.remove(os.path.join(out, "logits.npy"))
  tiny_tokenizer(extra_ids).save(os.path.join(out, "tokenizer.json"))
  if tokenizer_config is not None:
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
      json.dump(tokenizer_config, f)
  return out


def fixture(family: str):
  """(config.json dict, tensors, golden logits) of a fixture."""
  d = os.path.join(FIX, f"hf_{family}")
  return (json.load(open(os.path.join(d, "config.json"))), load_file(os.path.join(d, "model.safetensors")),
          np.load(os.path.join(d, "logits.npy")))


def rewrite_weights(folder: str, tensors: dict) -> None:
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, os.path.join(folder, "model.safetensors"))


# ---- GGUF ------------------------------------------------------------------------------------------------------

_GGUF_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
               "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
  """convert_hf_to_gguf.py LlamaModel.permute: rotate-half row pairs -> adjacent pairs."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def to_gguf_name(name: str) -> str:
  stem, suffix = name.rsplit(".", 1)
  if stem.startswith("model.layers."):
    i, rest = stem[len("model.layers."):].split(".", 1)
    return f"blk.{i}.{_GGUF_NAMES[rest]}.{suffix}"
  return f"{_GGUF_NAMES[stem]}.{suffix}"


def gguf_tensors(family: str, qtype=None, drop=(), reshape=None):
  """The fixture's tensors as llama.cpp writes them: {gguf name: (array or quantized bytes, type)}.

  Args:
    family: "llama" (Q/K permuted) or "qwen2".
    qtype: a gguf.GGMLQuantizationType for every matrix whose rows split into its blocks (others stay F32;
      even-indexed layers' norms are written F16 to mix types), or None for all F32.
    drop: GGUF names to leave out.
    reshape: {gguf name: new shape} to corrupt.
  """
  import gguf  # pylint: disable=g-import-not-at-top
  hf_cfg, tensors, _ = fixture(family)
  heads, kv = hf_cfg["num_attention_heads"], hf_cfg["num_key_value_heads"]
  out = {}
  for name, w in tensors.items():
    g = to_gguf_name(name)
    if g in drop:
      continue
    if family == "llama" and g.endswith(("attn_q.weight", "attn_k.weight")):
      w = llama_cpp_permute(w, heads if "attn_q" in g else kv)
    if reshape and g in reshape:
      w = w.reshape(reshape[g])
    t = gguf.GGMLQuantizationType.F32
    block = gguf.GGML_QUANT_SIZES[qtype][0] if qtype is not None else 0
    if qtype is not None and w.ndim == 2 and w.shape[1] % block == 0:
      w, t = gguf.quants.quantize(w.astype(np.float32), qtype), qtype
    elif qtype is not None and w.ndim == 1 and g.startswith("blk.0."):
      w, t = w.astype(np.float16), gguf.GGMLQuantizationType.F16
    out[g] = (np.ascontiguousarray(w), t)
  return hf_cfg, out


def write_gguf(path: str, family: str = "llama", qtype=None, arch=None, drop=(), reshape=None,
               vocab_extra: int = 0, pre: str = "smollm") -> str:
  """Writes a tiny GGUF of a fixture (metadata as llama.cpp writes it, the tiny BPE as its tokenizer)."""
  import gguf  # pylint: disable=g-import-not-at-top
  hf_cfg, tensors = gguf_tensors(family, qtype, drop, reshape)
  w = gguf.GGUFWriter(path, arch or family)
  w.add_block_count(hf_cfg["num_hidden_layers"])
  w.add_context_length(hf_cfg["max_position_embeddings"])
  w.add_embedding_length(hf_cfg["hidden_size"])
  w.add_feed_forward_length(hf_cfg["intermediate_size"])
  w.add_head_count(hf_cfg["num_attention_heads"])
  w.add_head_count_kv(hf_cfg["num_key_value_heads"])
  w.add_rope_freq_base(float(hf_cfg["rope_parameters"]["rope_theta"]))
  w.add_layer_norm_rms_eps(float(hf_cfg["rms_norm_eps"]))
  w.add_rope_dimension_count(hf_cfg["hidden_size"] // hf_cfg["num_attention_heads"])
  w.add_vocab_size(hf_cfg["vocab_size"])
  tokens, merges, types = tiny_vocab(vocab_extra)
  w.add_tokenizer_model("gpt2")
  w.add_tokenizer_pre(pre)
  w.add_token_list(tokens)
  w.add_token_types(types)
  w.add_token_merges(merges)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  w.add_pad_token_id(2)
  w.add_add_bos_token(False)
  w.add_chat_template(CHAT_TEMPLATE)
  for name, (data, t) in tensors.items():
    w.add_tensor(name, data, raw_dtype=t)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path
