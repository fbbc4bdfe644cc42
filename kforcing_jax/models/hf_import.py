"""Hugging Face causal-LM checkpoints (gpt2, llama, qwen2, qwen3) <-> our parameter tree; pure numpy mappings.

`config_from_hf(config.json dict)` gives the `ModelConfig`, `params_from_hf(tensors, cfg)` the inner parameter dict.
Every tensor of the checkpoint must be consumed and every shape is checked; failures raise `ImportError_` with one
line naming the tensor. No torch: tensors come from `safetensors.numpy`.
"""
from typing import Mapping

import numpy as np

from kforcing_jax.models.config import ModelConfig

FAMILIES = ("gpt2", "llama", "qwen2", "qwen3")
# Buffers some exporters keep beside the weights (causal masks, RoPE tables): not parameters.
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


class HFImportError(ValueError):
  """A checkpoint that cannot be imported (the message names the offending tensor or field)."""


def config_from_hf(hf: Mapping, max_len: int = 0) -> ModelConfig:
  """The `ModelConfig` (AR, k_max=0) of an HF config.json.

  Args:
    hf: the parsed config.json.
    max_len: longest sequence; 0 = min(max_position_embeddings, 2048).
  Returns:
    The config.
  Raises:
    HFImportError: unsupported model_type or a missing field.
  """
  family = hf.get("model_type")
  if family not in FAMILIES:
    raise HFImportError(f"unsupported model_type {family!r}; supported: {', '.join(FAMILIES)}")
  try:
    if family == "gpt2":
      d = int(hf["n_embd"])
      npos = int(hf["n_positions"])
      return ModelConfig.preset(
          "gpt2", vocab_size=int(hf["vocab_size"]), num_layers=int(hf["n_layer"]), d_model=d,
          num_heads=int(hf["n_head"]), mlp_dim=int(hf.get("n_inner") or 4 * d),
          norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), max_len=min(max_len or npos, npos))
    npos = int(hf.get("max_position_embeddings", 2048))
    rope_base = hf.get("rope_theta") or (hf.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    kw = dict(vocab_size=int(hf["vocab_size"]), num_layers=int(hf["num_hidden_layers"]),
              d_model=int(hf["hidden_size"]), num_heads=int(hf["num_attention_heads"]),
              num_kv_heads=int(hf.get("num_key_value_heads") or hf["num_attention_heads"]),
              mlp_dim=int(hf["intermediate_size"]), norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
              rope_base=float(rope_base), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
              max_len=max_len or min(npos, 2048))
    if hf.get("head_dim") and int(hf["head_dim"]) != kw["d_model"] // kw["num_heads"] or family == "qwen3":
      kw["attn_head_dim"] = int(hf.get("head_dim") or kw["d_model"] // kw["num_heads"])
    if family == "llama" and hf.get("attention_bias"):
      kw["qkv_bias"] = kw["attn_out_bias"] = True
    if hf.get("mlp_bias"):
      kw["mlp_bias"] = True
    return ModelConfig.preset(family, **kw)
  except KeyError as e:
    raise HFImportError(f"config.json has no field {e.args[0]!r} (model_type {family})") from None


class _Tensors:
  """The checkpoint's tensors; `take` checks the shape and marks the tensor consumed."""

  def __init__(self, tensors: Mapping[str, np.ndarray]):
    self._t = {k: v for k, v in tensors.items() if not k.endswith(_BUFFER_SUFFIXES)}
    self._used = set()

  def has(self, name):
    return name in self._t

  def take(self, name, shape):
    if name not in self._t:
      raise HFImportError(f"tensor {name} missing (expected shape {tuple(shape)})")
    x = np.asarray(self._t[name], np.float32)
    if tuple(x.shape) != tuple(shape):
      raise HFImportError(f"tensor {name} has shape {tuple(x.shape)}, expected {tuple(shape)}")
    self._used.add(name)
    return x

  def check_all_used(self):
    left = sorted(set(self._t) - self._used)
    if left:
      raise HFImportError(f"tensor {left[0]} is not used by the model ({len(left)} unused)")


def _strip(tensors: Mapping, prefix: str) -> dict:
  if any(k.startswith(prefix) for k in tensors):
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in tensors.items()}
  return dict(tensors)


def _attn_params(q, k, v, cfg: ModelConfig) -> dict:
  # q [D, H, Dh], k/v [D, Hkv, Dh] -> the fused reference layout, or separate Q and KV projections.
  if cfg.fused_qkv:
    return {"attn_qkv": np.stack([q, k, v], 1)}
  return {"attn_q": q, "attn_kv": np.stack([k, v], 1)}


def _attn_bias(q, k, v, cfg: ModelConfig) -> dict:
  if cfg.fused_qkv:
    return {"attn_qkv_bias": np.stack([q, k, v], 0)}
  return {"attn_q_bias": q, "attn_kv_bias": np.stack([k, v], 0)}


def _gpt2(t: _Tensors, cfg: ModelConfig) -> dict:
  d, h, dh, f, v = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.mlp_dim, cfg.vocab_size
  npos = t._t["wpe.weight"].shape[0] if t.has("wpe.weight") else cfg.max_len
  out = {"embed": {"embedding": t.take("wte.weight", (v, d))},
         "pos_embed": {"embedding": t.take("wpe.weight", (npos, d))[: cfg.max_len]},
         "final_norm": {"scale": t.take("ln_f.weight", (d,)), "bias": t.take("ln_f.bias", (d,))}}
  for i in range(cfg.num_layers):
    p = f"h.{i}."
    w = t.take(p + "attn.c_attn.weight", (d, 3 * d)).reshape(d, 3, h, dh)  # Conv1D: [in, out]
    b = t.take(p + "attn.c_attn.bias", (3 * d,)).reshape(3, h, dh)
    out[f"block_{i}"] = {
        "norm1": {"scale": t.take(p + "ln_1.weight", (d,)), "bias": t.take(p + "ln_1.bias", (d,))},
        "attn_qkv": w, "attn_qkv_bias": b,
        "attn_out": t.take(p + "attn.c_proj.weight", (d, d)).reshape(h, dh, d),
        "attn_out_bias": t.take(p + "attn.c_proj.bias", (d,)),
        "norm2": {"scale": t.take(p + "ln_2.weight", (d,)), "bias": t.take(p + "ln_2.bias", (d,))},
        "mlp_in": {"kernel": t.take(p + "mlp.c_fc.weight", (d, f)), "bias": t.take(p + "mlp.c_fc.bias", (f,))},
        "mlp_out": {"kernel": t.take(p + "mlp.c_proj.weight", (f, d)), "bias": t.take(p + "mlp.c_proj.bias", (d,))},
    }
  t._used.add("lm_head.weight") if t.has("lm_head.weight") and np.array_equal(
      np.asarray(t._t["lm_head.weight"]), out["embed"]["embedding"]) else None
  return out


def _llama_block(t: _Tensors, p: str, cfg: ModelConfig) -> dict:
  d, h, hkv, dh, f = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_dim, cfg.mlp_dim
  proj = lambda name, heads: t.take(p + f"self_attn.{name}.weight", (heads * dh, d)).T.reshape(d, heads, dh)
  blk = {"norm1": {"scale": t.take(p + "input_layernorm.weight", (d,))},
         "norm2": {"scale": t.take(p + "post_attention_layernorm.weight", (d,))},
         "attn_out": t.take(p + "self_attn.o_proj.weight", (d, h * dh)).T.reshape(h, dh, d)}
  blk.update(_attn_params(proj("q_proj", h), proj("k_proj", hkv), proj("v_proj", hkv), cfg))
  if cfg.qkv_bias:
    bias = lambda name, heads: t.take(p + f"self_attn.{name}.bias", (heads * dh,)).reshape(heads, dh)
    blk.update(_attn_bias(bias("q_proj", h), bias("k_proj", hkv), bias("v_proj", hkv), cfg))
  if cfg.attn_out_bias:
    blk["attn_out_bias"] = t.take(p + "self_attn.o_proj.bias", (d,))
  if cfg.qk_norm:
    blk["q_norm"] = {"scale": t.take(p + "self_attn.q_norm.weight", (dh,))}
    blk["k_norm"] = {"scale": t.take(p + "self_attn.k_norm.weight", (dh,))}
  for ours, theirs, shape in (("mlp_gate", "gate_proj", (f, d)), ("mlp_in", "up_proj", (f, d)),
                              ("mlp_out", "down_proj", (d, f))):
    blk[ours] = {"kernel": t.take(p + f"mlp.{theirs}.weight", shape).T}
    if cfg.mlp_bias:
      blk[ours]["bias"] = t.take(p + f"mlp.{theirs}.bias", shape[:1])
  return blk


def params_from_hf(tensors: Mapping[str, np.ndarray], cfg: ModelConfig, family: str) -> dict:
  """Our inner parameter dict from an HF state dict (numpy arrays), consuming every tensor.

  Args:
    tensors: tensor name -> array (as in the *.safetensors files).
    cfg: from `config_from_hf`.
    family: the config's model_type.
  Returns:
    Parameter dict (float32 numpy arrays).
  Raises:
    HFImportError: a missing, mis-shaped or unused tensor.
  """
  if family == "gpt2":
    t = _Tensors(_strip(tensors, "transformer."))
    out = _gpt2(t, cfg)
  else:
    t = _Tensors(_strip(tensors, "model."))
    d, v = cfg.d_model, cfg.vocab_size
    out = {"embed": {"embedding": t.take("embed_tokens.weight", (v, d))},
           "final_norm": {"scale": t.take("norm.weight", (d,))}}
    if not cfg.tie_embeddings:
      out["head"] = {"kernel": t.take("lm_head.weight", (v, d)).T}
    elif t.has("lm_head.weight"):  # tied checkpoints sometimes store the copy too
      t.take("lm_head.weight", (v, d))
    for i in range(cfg.num_layers):
      out[f"block_{i}"] = _llama_block(t, f"layers.{i}.", cfg)
  t.check_all_used()
  return out
