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
    if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
      raise ValueError(f"d_model={self.d_model} must split into {self.num_heads} heads of even size")
    if self.k_max < 0:
      raise ValueError(f"k_max must be >= 0, got {self.k_max}")
    if not -1 <= self.mask_index < self.vocab_size:
      raise ValueError(f"mask_index={self.mask_index} outside the vocabulary of {self.vocab_size}")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  @property
  def is_pflm(self) -> bool:
    return self.k_max > 0

  def hint_offsets(self, k: int) -> tuple:
    """Position offset (from the window's last context position) of each of the hints of k slots."""
    if self.hint_noise == "interleaved":
      return tuple(j // 2 + 1 for j in range(2 * k))
    return tuple(range(1, k + 1))

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
