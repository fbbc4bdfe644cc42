"""Our AR parameter tree -> a Hugging Face causal-LM checkpoint (config.json dict + safetensors tensors): the
inverse of `hf_import`, so that an imported (or trained) teacher of an HF family goes back to transformers.

Only the AR part is exported (a push-forward model's noise encoder has no HF counterpart); GPT-2's position table
holds the workdir's max_len rows, so n_positions is max_len.
"""
import jax
import numpy as np

from kforcing_jax.models.config import ModelConfig

_ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM"}
_LLAMA = dict(norm="rmsnorm", mlp="swiglu", position="rope", rope_layout="half", head_bias=False)
# The fields that tell the families apart (sizes, eps, RoPE base, KV heads and tying are carried by config.json).
_FAMILIES = {
    "gpt2": dict(norm="layernorm", mlp="gelu_tanh", position="learned", head_bias=False, qk_norm=False,
                 qkv_bias=True, attn_out_bias=True, mlp_bias=True, tie_embeddings=True, num_kv_heads=0,
                 attn_head_dim=0),
    "qwen3": dict(_LLAMA, qk_norm=True, qkv_bias=False, attn_out_bias=False),
    "qwen2": dict(_LLAMA, qk_norm=False, qkv_bias=True, attn_out_bias=False, mlp_bias=False),
    "llama": dict(_LLAMA, qk_norm=False),
}


class HFExportError(ValueError):
  """A model that has no Hugging Face form (one line saying why)."""


def family_of(cfg: ModelConfig) -> str:
  """The HF family `cfg` belongs to (gpt2 | qwen3 | qwen2 | llama).

  Raises:
    HFExportError: the reference architecture, a mix no HF family has, or a mask-logit rule (HF has none).
  """
  fields = cfg.to_dict()
  fits = [f for f, want in _FAMILIES.items() if all(fields[k] == v for k, v in want.items())]
  if fits == ["llama"] and cfg.qkv_bias != cfg.attn_out_bias:  # llama's attention_bias sets both
    fits = []
  if not fits:
    raise HFExportError("the model's architecture is no Hugging Face family (gpt2, llama, qwen2, qwen3); the "
                        "reference architecture has no HF form")
  if cfg.mask_index >= 0:
    raise HFExportError(f"mask_index={cfg.mask_index} forces a logit to -1000, which no HF model does")
  return fits[0]


def config_to_hf(cfg: ModelConfig, family: str) -> dict:
  """The config.json of `cfg` (float32 weights, max_position_embeddings = max_len)."""
  common = {"model_type": family, "architectures": [_ARCHITECTURES[family]], "vocab_size": cfg.vocab_size,
            "torch_dtype": "float32", "tie_word_embeddings": cfg.tie_embeddings}
  if family == "gpt2":
    return {**common, "n_embd": cfg.d_model, "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
            "n_inner": cfg.mlp_dim, "n_positions": cfg.max_len, "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": "gelu_new"}
  out = {**common, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.num_layers,
         "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_dim,
         "intermediate_size": cfg.mlp_dim, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_base,
         "max_position_embeddings": cfg.max_len, "hidden_act": "silu", "mlp_bias": cfg.mlp_bias}
  if family == "llama":
    out["attention_bias"] = cfg.qkv_bias
  return out


def _qkv(blk: dict, cfg: ModelConfig, suffix: str = ""):
  # -> q [.., H, Dh], k, v [.., Hkv, Dh] from the fused or the split layout (weights: axis 1 is the q/k/v index).
  if cfg.fused_qkv:
    w = blk["attn_qkv" + suffix]
    return (w[:, 0], w[:, 1], w[:, 2]) if not suffix else (w[0], w[1], w[2])
  kv = blk["attn_kv" + suffix]
  return (blk["attn_q" + suffix], kv[:, 0], kv[:, 1]) if not suffix else (blk["attn_q" + suffix], kv[0], kv[1])


def _gpt2(p: dict, cfg: ModelConfig) -> dict:
  d = cfg.d_model
  out = {"transformer.wte.weight": p["embed"]["embedding"], "transformer.wpe.weight": p["pos_embed"]["embedding"],
         "transformer.ln_f.weight": p["final_norm"]["scale"], "transformer.ln_f.bias": p["final_norm"]["bias"]}
  for i in range(cfg.num_layers):
    b, h = p[f"block_{i}"], f"transformer.h.{i}."
    out.update({h + "ln_1.weight": b["norm1"]["scale"], h + "ln_1.bias": b["norm1"]["bias"],
                h + "attn.c_attn.weight": b["attn_qkv"].reshape(d, 3 * d),
                h + "attn.c_attn.bias": b["attn_qkv_bias"].reshape(3 * d),
                h + "attn.c_proj.weight": b["attn_out"].reshape(d, d), h + "attn.c_proj.bias": b["attn_out_bias"],
                h + "ln_2.weight": b["norm2"]["scale"], h + "ln_2.bias": b["norm2"]["bias"],
                h + "mlp.c_fc.weight": b["mlp_in"]["kernel"], h + "mlp.c_fc.bias": b["mlp_in"]["bias"],
                h + "mlp.c_proj.weight": b["mlp_out"]["kernel"], h + "mlp.c_proj.bias": b["mlp_out"]["bias"]})
  return out


def _llama_block(b: dict, cfg: ModelConfig, h: str) -> dict:
  d = cfg.d_model
  flat = lambda w: w.reshape(d, -1).T  # [D, heads, Dh] -> HF [heads * Dh, D]
  q, k, v = _qkv(b, cfg)
  out = {h + "input_layernorm.weight": b["norm1"]["scale"], h + "post_attention_layernorm.weight": b["norm2"]["scale"],
         h + "self_attn.q_proj.weight": flat(q), h + "self_attn.k_proj.weight": flat(k),
         h + "self_attn.v_proj.weight": flat(v), h + "self_attn.o_proj.weight": b["attn_out"].reshape(-1, d).T}
  if cfg.qkv_bias:
    qb, kb, vb = _qkv(b, cfg, "_bias")
    out.update({h + "self_attn.q_proj.bias": qb.reshape(-1), h + "self_attn.k_proj.bias": kb.reshape(-1),
                h + "self_attn.v_proj.bias": vb.reshape(-1)})
  if cfg.attn_out_bias:
    out[h + "self_attn.o_proj.bias"] = b["attn_out_bias"]
  if cfg.qk_norm:
    out[h + "self_attn.q_norm.weight"], out[h + "self_attn.k_norm.weight"] = b["q_norm"]["scale"], b["k_norm"]["scale"]
  for ours, theirs in (("mlp_gate", "gate_proj"), ("mlp_in", "up_proj"), ("mlp_out", "down_proj")):
    out[h + f"mlp.{theirs}.weight"] = b[ours]["kernel"].T
    if cfg.mlp_bias:
      out[h + f"mlp.{theirs}.bias"] = b[ours]["bias"]
  return out


def to_hf(params: dict, cfg: ModelConfig) -> tuple[dict, dict]:
  """(config.json dict, {tensor name: float32 array}) of an AR model of an HF family.

  Args:
    params: the inner parameter dict (a push-forward model's noise encoder is left out).
    cfg: its config.
  Returns:
    The checkpoint, named as transformers saves it (contiguous float32 arrays).
  Raises:
    HFExportError: the architecture has no HF form.
  """
  family = family_of(cfg)
  p = {k: v for k, v in params.items() if not k.startswith("noise")}
  p = jax.tree.map(lambda x: np.asarray(x, np.float32), p)
  if family == "gpt2":
    tensors = _gpt2(p, cfg)
  else:
    tensors = {"model.embed_tokens.weight": p["embed"]["embedding"], "model.norm.weight": p["final_norm"]["scale"]}
    if not cfg.tie_embeddings:
      tensors["lm_head.weight"] = p["head"]["kernel"].T
    for i in range(cfg.num_layers):
      tensors.update(_llama_block(p[f"block_{i}"], cfg, f"model.layers.{i}."))
  return config_to_hf(cfg, family), {k: np.ascontiguousarray(v) for k, v in tensors.items()}
