"""GGUF files (llama.cpp) -> a `ModelConfig`, our parameter tree and the tokenizer's metadata; numpy via `gguf`.

Every tensor is dequantized to float32 with `gguf.quants.dequantize` (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1,
Q8_0 and the K-quants Q2_K..Q6_K, among others), renamed to the Hugging Face layout and mapped by `hf_import`, so
the shape checks and the every-tensor-consumed rule are the same; errors name the GGUF tensor. llama.cpp's
converter permutes the rows of Q and K of llama models so that its RoPE can rotate adjacent pairs; that is undone
here, so the llama preset's rotate-half RoPE applies. A file without `output.weight` ties the head to the embedding.
"""
import os
import re
from typing import Any, Mapping

import numpy as np

from kforcing_jax.models import hf_import
from kforcing_jax.models.config import ModelConfig

ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2"}  # general.architecture -> HF model_type
_PERMUTED_QK = ("llama",)  # architectures whose converter permutes Q/K (convert_hf_to_gguf.py LlamaModel.permute)
# (GGUF name, HF name) of the non-block tensors, and of the per-block ones after "blk.N." / "layers.N.".
_GLOBAL = (("token_embd", "embed_tokens"), ("output_norm", "norm"), ("output", "lm_head"))
_BLOCK = (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm"), ("attn_q", "self_attn.q_proj"),
          ("attn_k", "self_attn.k_proj"), ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"),
          ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"))


class GGUFImportError(ValueError):
  """A GGUF file that cannot be imported (one line naming the field or tensor)."""


def open_reader(path: str):
  """A `gguf.GGUFReader` of `path` (memory-mapped; nothing is dequantized yet)."""
  try:
    import gguf  # pylint: disable=g-import-not-at-top  (only conversion needs it)
  except ImportError:
    raise GGUFImportError("reading GGUF needs the gguf package (`pip install gguf`)") from None
  if not os.path.isfile(path):
    raise GGUFImportError(f"no such GGUF file: {path}")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # gguf raises ValueError / struct errors / IndexError for a file that is not GGUF
    raise GGUFImportError(f"{path} is not a readable GGUF file ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:100]})") from None


def metadata(reader) -> dict:
  """Every key-value field of the file (arrays as lists, strings decoded)."""
  out = {}
  for key, field in reader.fields.items():
    if key.startswith("GGUF."):
      continue
    try:
      out[key] = field.contents()
    except Exception:  # pylint: disable=broad-except  (a field of a type we never read)
      out[key] = None
  return out


def tokenizer_metadata(meta: Mapping[str, Any]) -> dict:
  """The `tokenizer.ggml.*` fields `pretrained_tokenizer.from_gguf` needs (missing ones are None)."""
  g = lambda k: meta.get(f"tokenizer.ggml.{k}")
  return {"model": g("model"), "pre": g("pre"), "tokens": g("tokens") or [], "token_type": g("token_type"),
          "merges": g("merges"), "bos_id": g("bos_token_id"), "eos_id": g("eos_token_id"),
          "pad_id": g("padding_token_id"), "add_bos": g("add_bos_token") if g("add_bos_token") is not None
          else g("model") == "llama", "chat_template": meta.get("tokenizer.chat_template")}


def hf_config(meta: Mapping[str, Any], tensor_names, vocab_rows: int) -> dict:
  """An HF config.json dict equivalent to the file's metadata.

  Args:
    meta: `metadata(reader)`.
    tensor_names: the file's tensor names (a missing output.weight means tied embeddings).
    vocab_rows: rows of token_embd.weight (the vocabulary when the metadata has no vocab_size).
  Returns:
    The dict for `hf_import.config_from_hf`.
  Raises:
    GGUFImportError: an unsupported architecture or feature (RoPE scaling, partial rotary, MoE, per-layer heads).
  """
  arch = meta.get("general.architecture")
  if arch not in ARCHITECTURES:
    raise GGUFImportError(f"unsupported GGUF architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}")
  a = lambda k, default=None: meta.get(f"{arch}.{k}", default)
  for key in ("embedding_length", "block_count", "feed_forward_length", "attention.head_count"):
    if a(key) is None:
      raise GGUFImportError(f"GGUF metadata has no {arch}.{key}")
  heads, kv = a("attention.head_count"), a("attention.head_count_kv", a("attention.head_count"))
  if isinstance(heads, list) or isinstance(kv, list) or isinstance(a("feed_forward_length"), list):
    raise GGUFImportError(f"per-layer head counts or widths ({arch}.attention.head_count*) are not supported")
  if (a("expert_count") or 0) > 0:
    raise GGUFImportError(f"mixture-of-experts GGUF ({arch}.expert_count={a('expert_count')}) is not supported")
  if a("rope.scaling.type") not in (None, "none") or "rope_freqs.weight" in tensor_names:
    raise GGUFImportError(f"RoPE scaling ({arch}.rope.scaling.type={a('rope.scaling.type')!r} or rope_freqs.weight) "
                          "is not supported")
  d, heads = int(a("embedding_length")), int(heads)
  head_dim = int(a("attention.key_length") or d // heads)
  if a("rope.dimension_count") not in (None, head_dim):
    raise GGUFImportError(f"partial rotary embeddings ({arch}.rope.dimension_count={a('rope.dimension_count')}, "
                          f"head size {head_dim}) are not supported")
  hf = {"model_type": ARCHITECTURES[arch], "vocab_size": int(a("vocab_size") or vocab_rows), "hidden_size": d,
        "num_hidden_layers": int(a("block_count")), "num_attention_heads": heads, "num_key_value_heads": int(kv),
        "intermediate_size": int(a("feed_forward_length")), "head_dim": head_dim,
        "rms_norm_eps": _decimal(a("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": _decimal(a("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(a("context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in tensor_names}
  if arch == "llama" and "blk.0.attn_q.bias" in tensor_names:
    hf["attention_bias"] = True
  return hf


def _decimal(x) -> float:
  # GGUF stores these as float32; 7 significant digits give back the decimal the model was configured with
  # (1e-05, not 9.999999747378752e-06), so the config equals the HF one.
  return float(f"{float(x):.7g}")


def hf_name(name: str) -> str:
  """The HF (prefix-stripped) name of a GGUF tensor, or the name itself when it has no counterpart."""
  stem, _, suffix = name.rpartition(".")
  m = re.fullmatch(r"blk\.(\d+)\.(.+)", stem)
  table = dict(_BLOCK) if m else dict(_GLOBAL)
  key = m.group(2) if m else stem
  if key not in table:
    return name
  return (f"layers.{m.group(1)}." if m else "") + f"{table[key]}.{suffix}"


def gguf_name(name: str) -> str:
  """The GGUF name of an HF (prefix-stripped) tensor name; inverse of `hf_name`."""
  stem, _, suffix = name.rpartition(".")
  m = re.fullmatch(r"layers\.(\d+)\.(.+)", stem)
  table = {h: g for g, h in (_BLOCK if m else _GLOBAL)}
  key = m.group(2) if m else stem
  if key not in table:
    return name
  return (f"blk.{m.group(1)}." if m else "") + f"{table[key]}.{suffix}"


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  # llama.cpp: W.reshape(H, 2, Dh/2, ...).swapaxes(1, 2) turns rotate-half pairs (i, i+Dh/2) into (2i, 2i+1).
  return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dequantized_tensors(reader, arch: str, num_heads: int, num_kv_heads: int) -> dict:
  """Every tensor as float32 under its HF name, Q/K rows restored to the HF order.

  Raises:
    GGUFImportError: a tensor type that `gguf` cannot dequantize (naming the tensor).
  """
  from gguf import quants  # pylint: disable=g-import-not-at-top

  out = {}
  for t in reader.tensors:
    try:
      x = np.asarray(quants.dequantize(t.data, t.tensor_type), np.float32)
    except (NotImplementedError, ValueError) as e:
      raise GGUFImportError(f"tensor {t.name}: cannot dequantize type {t.tensor_type.name} ({e})") from None
    x = x.reshape(tuple(int(n) for n in reversed(t.shape)))  # ggml lists dims fastest-first
    name = hf_name(t.name)
    if arch in _PERMUTED_QK and re.search(r"self_attn\.[qk]_proj\.", name):
      heads = num_heads if ".q_proj." in name else num_kv_heads
      if x.shape[0] % (2 * heads):
        raise GGUFImportError(f"tensor {t.name} has shape {tuple(x.shape)}: {x.shape[0]} rows do not split into "
                              f"{heads} heads")
      x = _unpermute(x, heads)
    out[name] = x
  return out


def read_header(path: str, max_len: int = 0) -> tuple[Any, ModelConfig, dict, dict]:
  """Reads a GGUF file's metadata and tensor list (nothing dequantized): enough to check everything but weights.

  Args:
    path: the .gguf file.
    max_len: longest sequence; 0 = min(context_length, 2048).
  Returns:
    (reader, ModelConfig, tokenizer metadata for `pretrained_tokenizer.from_gguf`,
    info {"architecture", "tensor_types": {type: count}, "hf_config", "name"}).
  Raises:
    GGUFImportError: an unreadable file, unsupported architecture or feature, missing metadata.
  """
  reader = open_reader(path)
  meta = metadata(reader)
  names = {t.name for t in reader.tensors}
  embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
  if embed is None:
    raise GGUFImportError("tensor token_embd.weight missing")
  hf = hf_config(meta, names, int(embed.shape[-1]))
  try:
    cfg = hf_import.config_from_hf(hf, max_len=max_len)
  except hf_import.HFImportError as e:
    raise GGUFImportError(str(e)) from None
  types = {}
  for t in reader.tensors:
    types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
  info = {"architecture": meta["general.architecture"], "tensor_types": types, "hf_config": hf,
          "name": meta.get("general.name")}
  return reader, cfg, tokenizer_metadata(meta), info


def read_params(reader, cfg: ModelConfig, info: dict) -> dict:
  """Our parameters (float32 numpy, inner dict) from a `read_header` result, consuming every tensor.

  Raises:
    GGUFImportError: a tensor missing, mis-shaped, unused or of a type gguf cannot dequantize (named).
  """
  try:
    tensors = dequantized_tensors(reader, info["architecture"], cfg.num_heads, cfg.kv_heads)
    return hf_import.params_from_hf(tensors, cfg, info["hf_config"]["model_type"])
  except hf_import.HFImportError as e:
    msg = re.sub(r"tensor (\S+)", lambda m: f"tensor {gguf_name(m.group(1))}", str(e))
    if "shape" in msg:
      msg += " (shapes in numpy order, ggml lists them reversed)"
    raise GGUFImportError(msg) from None


def load(path: str, max_len: int = 0) -> tuple[ModelConfig, dict, dict, dict]:
  """Reads a GGUF file into our parameters: `read_header` then `read_params`.

  Returns:
    (ModelConfig, params, tokenizer metadata, info); see `read_header`.
  Raises:
    GGUFImportError: anything unsupported, missing, mis-shaped or unused, in one line.
  """
  reader, cfg, tok_meta, info = read_header(path, max_len)
  return cfg, read_params(reader, cfg, info), tok_meta, info
