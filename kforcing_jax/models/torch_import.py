"""The reference's PyTorch checkpoints <-> our parameter tree (docs/method.md), a pure key / layout mapping.

The reference stores one flat state dict (optionally a Lightning dict {"state_dict": ...} with a "backbone." key
prefix). Its backbone keys map onto ours one to one:

  vocab_embed.embedding              [V, D]       embed/embedding             [V, D]
  rotary_emb.inv_freq                [Dh/2]       (checked against cfg.rope_base; no parameter)
  blocks.i.norm1.weight              [D]          block_i/norm1/scale
  blocks.i.attn_qkv.weight           [3D, D]      block_i/attn_qkv            [D, 3, H, Dh]  (rows = (three h d))
  blocks.i.attn_out.weight           [D, D]       block_i/attn_out            [H, Dh, D]
  blocks.i.norm2.weight              [D]          block_i/norm2/scale
  blocks.i.mlp.{0,2}.{weight,bias}                block_i/mlp_{in,out}/{kernel (= weight.T), bias}
  output_layer.norm_final.weight                  final_norm/scale
  output_layer.linear.{weight,bias}               head/{kernel, bias}
and a push-forward LM adds
  noise_encoder.combined_proj.{weight,bias}       noise_encoder/combined_proj/{kernel, bias}
  noise_encoder.norm.{weight,bias}                noise_encoder/norm/{scale, bias}
  noise_encoder.mlp.{0,2}.{weight,bias}           noise_encoder/mlp_{in,out}/{kernel, bias}

torch is imported only inside `load_state_dict`, so the mapping works (and is tested) without it. Writing a workdir
from a converted checkpoint is `kforcing_jax.conversion`.
"""
import collections
import os
import re
from typing import Mapping

import jax.numpy as jnp
import numpy as np

from kforcing_jax.models.config import ModelConfig

PREFIX = "backbone."
KINDS = ("ar", "pflm")


class ConversionError(ValueError):
  """A reference checkpoint that cannot be converted (the message names the offending key or input)."""


def _linear(prefix: str):
  # torch Linear stores weight [out, in]; a flax Dense kernel is [in, out].
  return [(f"{prefix}.weight", ("kernel",), "T"), (f"{prefix}.bias", ("bias",), None)]


def _mapping(cfg: ModelConfig) -> list[tuple[str, tuple[str, ...], str]]:
  # (reference key, our param path, layout transform) for every parameter; the RoPE buffer has no parameter.
  out = [("vocab_embed.embedding", ("embed", "embedding"), None)]
  for i in range(cfg.num_layers):
    b, blk = f"blocks.{i}", (f"block_{i}",)
    out += [(f"{b}.norm1.weight", blk + ("norm1", "scale"), None),
            (f"{b}.attn_qkv.weight", blk + ("attn_qkv",), "qkv"),
            (f"{b}.attn_out.weight", blk + ("attn_out",), "out"),
            (f"{b}.norm2.weight", blk + ("norm2", "scale"), None)]
    out += [(k, blk + ("mlp_in",) + p, t) for k, p, t in _linear(f"{b}.mlp.0")]
    out += [(k, blk + ("mlp_out",) + p, t) for k, p, t in _linear(f"{b}.mlp.2")]
  out += [("output_layer.norm_final.weight", ("final_norm", "scale"), None)]
  out += [(k, ("head",) + p, t) for k, p, t in _linear("output_layer.linear")]
  if cfg.is_pflm:
    ne = ("noise_encoder",)
    out += [(k, ne + ("combined_proj",) + p, t) for k, p, t in _linear("noise_encoder.combined_proj")]
    out += [("noise_encoder.norm.weight", ne + ("norm", "scale"), None),
            ("noise_encoder.norm.bias", ne + ("norm", "bias"), None)]
    out += [(k, ne + ("mlp_in",) + p, t) for k, p, t in _linear("noise_encoder.mlp.0")]
    out += [(k, ne + ("mlp_out",) + p, t) for k, p, t in _linear("noise_encoder.mlp.2")]
  return out


def reference_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
  """The reference state dict's key -> shape for a model with config `cfg` (rotary_emb.inv_freq included).

  Args:
    cfg: our model config (mlp_dim may differ from the reference's fixed 4 * d_model only for round-trip tests).
  Returns:
    key -> shape, in the reference's layout.
  """
  d, v, f = cfg.d_model, cfg.vocab_size, cfg.mlp_dim
  shapes = {"vocab_embed.embedding": (v, d), "rotary_emb.inv_freq": (cfg.head_dim // 2,),
            "output_layer.norm_final.weight": (d,), "output_layer.linear.weight": (v, d),
            "output_layer.linear.bias": (v,)}
  for i in range(cfg.num_layers):
    b = f"blocks.{i}"
    shapes.update({f"{b}.norm1.weight": (d,), f"{b}.attn_qkv.weight": (3 * d, d), f"{b}.attn_out.weight": (d, d),
                   f"{b}.norm2.weight": (d,), f"{b}.mlp.0.weight": (f, d), f"{b}.mlp.0.bias": (f,),
                   f"{b}.mlp.2.weight": (d, f), f"{b}.mlp.2.bias": (d,)})
  if cfg.is_pflm:
    shapes.update({"noise_encoder.combined_proj.weight": (d, 2 * d), "noise_encoder.combined_proj.bias": (d,),
                   "noise_encoder.norm.weight": (d,), "noise_encoder.norm.bias": (d,),
                   "noise_encoder.mlp.0.weight": (4 * d, d), "noise_encoder.mlp.0.bias": (4 * d,),
                   "noise_encoder.mlp.2.weight": (d, 4 * d), "noise_encoder.mlp.2.bias": (d,)})
  return shapes


def rope_inv_freq(head_dim: int, base: float) -> np.ndarray:
  """The reference Rotary buffer: 1 / base^(2j / head_dim), float32."""
  return (1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))).astype(np.float32)


def strip_prefix(state: Mapping) -> dict:
  """The model's flat state dict from a raw checkpoint: unwraps {"state_dict": ...} and drops a "backbone." prefix.

  Args:
    state: what `torch.load` returned (a state dict or a Lightning checkpoint dict).
  Returns:
    key -> tensor with the prefix removed.
  """
  if not isinstance(state, Mapping):
    raise ConversionError(f"checkpoint holds a {type(state).__name__}, not a state dict")
  sd = state.get("state_dict", state)
  if not isinstance(sd, Mapping):
    raise ConversionError(f"checkpoint's 'state_dict' is a {type(sd).__name__}, not a dict")
  out = {}
  for key, val in sd.items():
    new = key[len(PREFIX):] if key.startswith(PREFIX) else key
    if new in out:
      raise ConversionError(f"key {new!r} appears both with and without the {PREFIX!r} prefix")
    out[new] = val
  return out


def infer_config(sd: Mapping, kind: str, *, k_max: int = 4, mask_index: int = -1, max_len: int = 1024,
                 **overrides) -> ModelConfig:
  """Our `ModelConfig` for a reference state dict, inferred from tensor shapes as the reference loader does.

  vocab and hidden size from `vocab_embed.embedding`, blocks from the largest `blocks.<i>.` index, heads from the
  length of `rotary_emb.inv_freq` (head_dim = 2 * len), MLP width 4 * hidden (fixed in the reference).

  Args:
    sd: the prefix-stripped state dict (arrays or tensors; only `.shape` is read).
    kind: "ar" (k_max = 0) or "pflm".
    k_max: largest K the push-forward LM is run at (the checkpoint does not record it).
    mask_index: token id whose logit is forced to -1000, or -1.
    max_len: longest sequence our model will accept.
    **overrides: further `ModelConfig` fields (dtype, attention_impl, ...).
  Returns:
    The config.
  Raises:
    ConversionError: a key needed for inference is missing or the shapes are inconsistent.
  """
  if kind not in KINDS:
    raise ConversionError(f"unknown kind {kind!r}; expected one of {KINDS}")
  for key in ("vocab_embed.embedding", "rotary_emb.inv_freq"):
    if key not in sd:
      raise ConversionError(f"missing key {key!r}: cannot infer the model size")
  emb_shape, freq_shape = tuple(sd["vocab_embed.embedding"].shape), tuple(sd["rotary_emb.inv_freq"].shape)
  if len(emb_shape) != 2 or len(freq_shape) != 1:
    raise ConversionError(f"mis-shaped vocab_embed.embedding {emb_shape} or rotary_emb.inv_freq {freq_shape}")
  vocab, d = emb_shape
  head_dim = 2 * freq_shape[0]
  if head_dim == 0 or d % head_dim:
    raise ConversionError(f"rotary_emb.inv_freq of length {freq_shape[0]} does not divide hidden size {d}")
  blocks = [int(m.group(1)) for m in (re.match(r"blocks\.(\d+)\.", k) for k in sd) if m]
  if not blocks:
    raise ConversionError("no 'blocks.<i>.' keys in the checkpoint")
  if kind == "pflm" and k_max < 1:
    raise ConversionError(f"a push-forward LM needs k_max >= 1, got {k_max}")
  if not -1 <= mask_index < vocab:
    raise ConversionError(f"mask_index {mask_index} outside the checkpoint's vocabulary of {vocab}")
  try:
    return ModelConfig(vocab_size=vocab, num_layers=max(blocks) + 1, d_model=d, num_heads=d // head_dim,
                       mlp_dim=4 * d, max_len=max_len, k_max=k_max if kind == "pflm" else 0,
                       mask_index=mask_index, **overrides)
  except (TypeError, ValueError) as e:
    raise ConversionError(f"invalid model config: {e}") from e


def _to_numpy(x) -> np.ndarray:
  if hasattr(x, "detach"):  # a torch tensor; bf16/fp16 have no numpy twin, so go through float32
    x = x.detach().cpu()
    if not x.dtype.is_floating_point:
      return x.numpy()
    return x.float().numpy()
  return np.asarray(x)


def from_reference_state_dict(sd: Mapping, cfg: ModelConfig) -> dict:
  """Maps a prefix-stripped reference state dict onto our inner parameter dict, checking every key and shape.

  Args:
    sd: reference key -> array or torch tensor.
    cfg: the target config (e.g. from `infer_config`).
  Returns:
    Our nested param dict (numpy arrays in cfg.param_dtype), ready for `{"params": ...}`.
  Raises:
    ConversionError: one line naming the first missing, extra or mis-shaped key, or a RoPE base mismatch.
  """
  shapes = reference_shapes(cfg)
  for key in shapes:
    if key not in sd:
      raise ConversionError(f"missing key {key!r} (expected shape {shapes[key]})")
  extra = sorted(set(sd) - set(shapes))
  if extra:
    raise ConversionError(f"unexpected key {extra[0]!r} (not part of a {'pflm' if cfg.is_pflm else 'ar'} model"
                          f" with {cfg.num_layers} blocks)" + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
  arrays = {}
  for key, want in shapes.items():
    if not hasattr(sd[key], "shape"):
      raise ConversionError(f"key {key!r} holds a {type(sd[key]).__name__}, not a tensor")
    have = tuple(sd[key].shape)
    if have != want:
      raise ConversionError(f"mis-shaped key {key!r}: {have}, expected {want}")
    arrays[key] = _to_numpy(sd[key])
    if not np.all(np.isfinite(arrays[key])):
      raise ConversionError(f"key {key!r} holds non-finite values")
  want_freq = rope_inv_freq(cfg.head_dim, cfg.rope_base)
  if not np.allclose(arrays["rotary_emb.inv_freq"], want_freq, rtol=1e-5, atol=0):
    raise ConversionError(f"key 'rotary_emb.inv_freq' does not match RoPE base {cfg.rope_base} "
                          f"(max rel. diff {np.max(np.abs(arrays['rotary_emb.inv_freq'] / want_freq - 1)):.2e})")

  h, dh, d = cfg.num_heads, cfg.head_dim, cfg.d_model
  params: dict = {}
  for key, path, how in _mapping(cfg):
    x = arrays[key]
    if how == "T":
      x = x.T
    elif how == "qkv":  # rows are (three, h, d) head-major; ours is [D_in, 3, H, Dh]
      x = x.reshape(3, h, dh, d).transpose(3, 0, 1, 2)
    elif how == "out":  # columns are (h, d)
      x = x.T.reshape(h, dh, d)
    node = params
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = np.ascontiguousarray(x).astype(jnp.dtype(cfg.param_dtype))
  return params


def to_reference_state_dict(params: Mapping, cfg: ModelConfig, prefix: str = "") -> dict[str, np.ndarray]:
  """The inverse of `from_reference_state_dict`: our inner param dict -> the reference's keys and layouts.

  Args:
    params: our inner param dict (arrays of any kind convertible by numpy).
    cfg: its config.
    prefix: prepended to every key (e.g. "backbone." for a Lightning-style dict).
  Returns:
    key -> float32 numpy array, including `rotary_emb.inv_freq`.
  """
  h, dh, d = cfg.num_heads, cfg.head_dim, cfg.d_model
  out = {}
  for key, path, how in _mapping(cfg):
    x = params
    for name in path:
      x = x[name]
    x = np.asarray(x, dtype=np.float32)
    if how == "T":
      x = x.T
    elif how == "qkv":
      x = x.transpose(1, 2, 3, 0).reshape(3 * d, d)
    elif how == "out":
      x = x.reshape(h * dh, d).T
    out[prefix + key] = np.ascontiguousarray(x)
  out[prefix + "rotary_emb.inv_freq"] = rope_inv_freq(dh, cfg.rope_base)
  return out


class _Opaque:
  """Stand-in for a non-tensor pickled class or function: building it yields an empty OrderedDict.

  The weights-only unpickler lets an OrderedDict take dict items (SETITEMS) and attribute state (BUILD), which is all
  that pickles of config objects, dict subclasses and loop/callback states do, so their contents land in a plain
  container and no code of theirs runs.
  """

  def __new__(cls, *args, **kwargs):
    del args, kwargs
    return collections.OrderedDict()


def load_state_dict(path: str) -> dict:
  """Reads a reference checkpoint (torch file, `weights_only=True`; or an .npz of the state dict) without prefix.

  Args:
    path: a `.ckpt` / `.pt` / `.pth` torch file, or a `.npz`.
  Returns:
    The prefix-stripped flat state dict (torch tensors or numpy arrays).
  Raises:
    ConversionError: the file is missing, unreadable, or not a state dict.
  """
  if not os.path.isfile(path):
    raise ConversionError(f"no such checkpoint file: {path}")
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as z:
        sd = {k: z[k] for k in z.files}
    except Exception as e:  # zip, pickle-refusal and EOF errors all mean "not an .npz state dict"
      raise ConversionError(f"cannot read {path} as an .npz state dict ({type(e).__name__}: "
                            f"{' '.join(str(e).split())[:120] or 'empty file'})") from None
    if not sd:
      raise ConversionError(f"{path} holds no arrays")
    return strip_prefix(sd)
  try:
    import torch  # pylint: disable=g-import-not-at-top  (optional dependency: the `convert` extra)
  except ImportError as e:
    raise ConversionError("reading a torch checkpoint needs torch: pip install 'kforcing_jax[convert]'") from e
  try:
    # Lightning checkpoints carry pickled objects (hyper-parameters, loop and callback state) besides the tensors.
    # weights_only refuses them; each such global is allowlisted as an inert stub that runs no code and keeps nothing.
    opaque = [(_Opaque, name) for name in torch.serialization.get_unsafe_globals_in_checkpoint(path)]
    with torch.serialization.safe_globals(opaque):
      state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pickle and zip errors surface under several types
    msg = " ".join(str(e).split())
    hit = re.search(r"Unsupported global: GLOBAL \S+|Can only .*?but got <class '[^']*'>", msg)
    why = f"{hit.group(0)}; save its state_dict alone to convert it" if hit else msg[:200]
    raise ConversionError(f"cannot read {path} with torch.load(weights_only=True): {why}") from e
  return strip_prefix(state)
