"""The model's hyper-parameters as one frozen, hashable dataclass.

Linen modules need hashable attributes, so the ml-collections `config.model` block is turned into a `ModelConfig`
once (unknown keys are an error) and that object is what every module, decoder and checkpoint sees.
"""
import dataclasses
from typing import Any, Mapping

ATTENTION_IMPLS = ("dense", "split", "pallas")
DTYPES = ("float32", "bfloat16")
HINT_NOISES = ("current", "previous", "interleaved")
NOISE_FEATURES = ("sinusoid", "ramp")
NORMS = ("layernorm_nobias", "layernorm", "rmsnorm")
MLPS = ("gelu_tanh", "gelu", "swiglu")
POSITIONS = ("rope", "learned")
ROPE_LAYOUTS = ("half", "interleaved")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Backbone + push-forward hyper-parameters (defaults: the tiny CPU model)."""
  vocab_size: int = 4096
  num_layers: int = 4
  d_model: int = 256
  num_heads: int = 4
  mlp_dim: int = 1024          # backbone MLP width; the noise encoder's MLP is 4 * d_model as in the reference
  max_len: int = 128           # longest sequence (positions 0..max_len-1) the model is trained / decoded at
  k_max: int = 0               # 0: AR teacher (no noise encoder); k >= 1: push-forward LM emitting up to k tokens
  mask_index: int = -1         # token id whose logit is forced to -1000 (reference); -1: none
  dropout_rate: float = 0.0
  dtype: str = "float32"       # compute dtype; LayerNorm, RoPE and softmax always run in float32
  param_dtype: str = "float32"
  attention_impl: str = "split"  # dense (oracle) | split (default, XLA) | pallas (kernels)
  remat: bool = False          # gradient checkpointing per block
  rope_base: float = 10000.0
  block_q: int = 128           # pallas tile sizes
  block_k: int = 128
  # Which noise each hint encodes. "current": hint i encodes u_i (the reference). "previous": u_{i-1}, hint 1 a
  # learned start feature. "interleaved": 2K hints per window, D_1 S_1 D_2 S_2 ... D_K S_K: the distribution hint
  # D_i (a learned start feature) gives slot i's logits, the decision hint S_i encodes u_i and only serves the
  # hints after it (it can compute slot i's token from D_i and u_i; its own logits are trained to be that token).
  # In the last two layouts slot i's distribution q_i depends on u_1..u_{i-1} only, so the inverse CDF of q_i at
  # u_i is an exact draw from q_i (sampled readout, speculative decoding).
  hint_noise: str = "current"
  # Features of u in the noise encoder: "sinusoid" (the reference's, <= 1 cycle over [0, 1]) | "ramp" (a
  # thermometer code, `layers.ramp_features`). Same parameter shapes.
  noise_features: str = "sinusoid"
  # Token feedback: the last `feedback_layers` blocks add to hint i (i >= 2) the embedding of the token slot i-1
  # emitted, so a hint no longer has to recover the earlier slots' tokens from their noises (docs/method.md §9).
  # Training feeds the rollout the targets follow (one parallel staircase); decoding runs those blocks slot by
  # slot. 0: off (the reference). No parameters of its own: the token embedding table is reused.
  feedback_layers: int = 0
  # ---- backbone architecture (defaults: the reference's DDiT block; `PRESETS` names the other families) ----
  norm: str = "layernorm_nobias"   # layernorm_nobias (reference) | layernorm (scale + bias, GPT-2) | rmsnorm
  norm_eps: float = 1e-5
  mlp: str = "gelu_tanh"           # gelu_tanh (reference, GPT-2) | gelu (exact) | swiglu (SiLU-gated, Llama)
  mlp_bias: bool = True
  num_kv_heads: int = 0            # 0: = num_heads (MHA); fewer: GQA; 1: MQA
  attn_head_dim: int = 0           # 0: d_model // num_heads (Qwen3 sets it explicitly)
  qkv_bias: bool = False           # Qwen2, GPT-2
  attn_out_bias: bool = False      # GPT-2
  qk_norm: bool = False            # RMSNorm of each query/key head before RoPE (Qwen3)
  position: str = "rope"           # rope | learned (absolute position table, GPT-2; hints read it at t+i)
  rope_layout: str = "half"        # half: rotate-half pairs (i, i+D/2) (reference, HF) | interleaved: (2i, 2i+1)
  tie_embeddings: bool = False     # output head = embedding matrix transposed
  head_bias: bool = True           # bias on the output head (reference); HF families have none

  def __post_init__(self):
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(f"unknown attention_impl {self.attention_impl!r}; expected one of {ATTENTION_IMPLS}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"unknown {name} {getattr(self, name)!r}; expected one of {DTYPES}")
    if self.hint_noise not in HINT_NOISES:
      raise ValueError(f"unknown hint_noise {self.hint_noise!r}; expected one of {HINT_NOISES}")
    if self.noise_features not in NOISE_FEATURES:
      raise ValueError(f"unknown noise_features {self.noise_features!r}; expected one of {NOISE_FEATURES}")
    for name, allowed in (("norm", NORMS), ("mlp", MLPS), ("position", POSITIONS), ("rope_layout", ROPE_LAYOUTS)):
      if getattr(self, name) not in allowed:
        raise ValueError(f"unknown {name} {getattr(self, name)!r}; expected one of {allowed}")
    if not self.attn_head_dim and (self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2):
      raise ValueError(f"d_model={self.d_model} must split into {self.num_heads} heads of even size")
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even")
    if self.kv_heads < 1 or self.num_heads % self.kv_heads:
      raise ValueError(f"num_kv_heads={self.num_kv_heads} must divide num_heads={self.num_heads}")
    if self.tie_embeddings and self.head_bias:
      raise ValueError("tie_embeddings=True has no separate head, so head_bias must be False")
    if not 0 <= self.feedback_layers <= self.num_layers:
      raise ValueError(f"feedback_layers={self.feedback_layers} outside 0..num_layers={self.num_layers}")
    if self.feedback_layers and self.hint_noise == "interleaved":
      raise ValueError("feedback_layers needs hint_noise 'previous' or 'current', not 'interleaved'")
    if self.k_max < 0:
      raise ValueError(f"k_max must be >= 0, got {self.k_max}")
    if not -1 <= self.mask_index < self.vocab_size:
      raise ValueError(f"mask_index={self.mask_index} outside the vocabulary of {self.vocab_size}")

  @property
  def head_dim(self) -> int:
    return self.attn_head_dim or self.d_model // self.num_heads

  @property
  def kv_heads(self) -> int:
    return self.num_kv_heads or self.num_heads

  @property
  def fused_qkv(self) -> bool:
    """One [D, 3, H, Dh] projection (the reference's attn_qkv) unless K/V have their own head count."""
    return self.kv_heads == self.num_heads

  @property
  def is_pflm(self) -> bool:
    return self.k_max > 0

  def hint_offsets(self, k: int) -> tuple:
    """Position offset (from the window's last context position) of each of the hints of k slots."""
    if self.hint_noise == "interleaved":
      return tuple(j // 2 + 1 for j in range(2 * k))
    return tuple(range(1, k + 1))

  @classmethod
  def preset(cls, family: str, **kw) -> "ModelConfig":
    """The architecture fields of a model family ("reference", "gpt2", "llama", "qwen2", "qwen3") plus `kw`.

    Args:
      family: one of `PRESETS`.
      **kw: any other fields (sizes, k_max, ...), overriding the preset.
    Returns:
      The validated `ModelConfig`.
    """
    if family not in PRESETS:
      raise ValueError(f"unknown model family {family!r}; expected one of {sorted(PRESETS)}")
    return cls(**{**PRESETS[family], **kw})

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    """Builds a config from a mapping (an ml-collections block or JSON), rejecting unknown keys.

    Args:
      d: field name -> value.
    Returns:
      The validated `ModelConfig`.
    """
    d = dict(d.items()) if hasattr(d, "items") else dict(d)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"unknown model config key(s) {unknown}; known: {sorted(known)}")
    return cls(**d)


_LLAMA = dict(norm="rmsnorm", norm_eps=1e-6, mlp="swiglu", mlp_bias=False, head_bias=False, mask_index=-1)
# Architecture fields only; sizes, eps and RoPE base come from the checkpoint's own config.
PRESETS = {
    "reference": {},
    "gpt2": dict(norm="layernorm", mlp="gelu_tanh", qkv_bias=True, attn_out_bias=True, position="learned",
                 tie_embeddings=True, head_bias=False, mask_index=-1),
    "llama": _LLAMA,
    "qwen2": dict(_LLAMA, qkv_bias=True),
    "qwen3": dict(_LLAMA, qk_norm=True),
}
# Full shapes of the real teachers that are configs here (experiments/configs/smollm2_k4.py, `bench --smollm2_size`):
# SmolLM2-135M as `convert --gguf smollm2` writes it (its max_len aside).
SMOLLM2_135M = dict(PRESETS["llama"], vocab_size=49152, num_layers=30, d_model=576, num_heads=9, num_kv_heads=3,
                    mlp_dim=1536, rope_base=100000.0, norm_eps=1e-5, tie_embeddings=True)
