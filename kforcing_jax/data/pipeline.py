"""grain input pipeline: packed (or padded) token batches, per-process shards, checkpointable iterators.

Each split is tokenized once (documents prefixed with the tokenizer's bos) into a flat token file cached beside the
prepared tfds files, keyed by the tokenizer's fingerprint. Examples are then cheap random-access slices of it:
  pack  window i = tokens[i*seq_len : (i+1)*seq_len] of the concatenated documents (OWT style; loss_mask all 1).
  pad   example i = document i (bos + tokens + eos) truncated to seq_len and padded with pad_id, loss_mask 0 on
        padding (LM1B style; a truncated document has no eos).
Order: a seeded permutation of the examples, reshuffled every epoch (grain's MapDataset.shuffle), repeated
`num_epochs` times (None: forever), cut into global batches of `batch_size`; process `shard_index` of
`shard_count` takes rows shard_index, shard_index + shard_count, ... of that stream, so every global batch is the
same set of examples whatever the number of processes. A finite stream is padded to whole batches with empty rows
(loss_mask 0), so evaluation sees every token exactly once.

Checkpointing the iterator with orbax (the "data" item of `training/checkpoint.py`):
  it = iter(make_dataset(...))
  checkpoint.save(mngr, step, params, meta, data_state=grain.checkpoint.CheckpointSave(it))
  checkpoint.restore(workdir, data_state=grain.checkpoint.CheckpointRestore(it), items=(..., "data"))
`restore` updates `it` in place; its next batch is the one that followed the save. (`it.get_state()` /
`it.set_state(state)` is the same thing as a small dict.)
"""
import json
import os
import shutil
import tempfile
from typing import Optional

import grain
import numpy as np
from tensorflow_datasets.core import constants as tfds_constants

from kforcing_jax.data import corpora
from kforcing_jax.data.corpora import DataError, default_data_config, held_out_texts, prepare  # noqa: F401

_ENCODE_CHUNK = 512


def _cache_root(data_cfg, builder) -> str:
  # Our own root, not builder.data_dir: under tfds' mock_data that points into the tfds package itself.
  base = data_cfg.get("cache_dir") or corpora.data_dir_of(data_cfg) or tfds_constants.DATA_DIR
  if "://" in base:  # gs:// and friends: cache on local disk instead
    base = os.path.expanduser("~/.cache/kforcing_jax")
  config = builder.builder_config.name if builder.builder_config else "default"
  return os.path.join(os.path.expanduser(base), "kforcing_token_cache", builder.name, config, str(builder.version))


def token_cache(data_cfg, tokenizer, split: str, data_dir: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
  """The split's documents tokenized once (bos + ids each), cached on disk.

  Args:
    data_cfg: the data config block.
    tokenizer: a tokenizer from `tokenizers.py`.
    split: "train" or "validation".
    data_dir: overrides data_cfg.data_dir.
  Returns:
    (tokens, starts): tokens a read-only uint16/uint32 memmap of all documents back to back; document d is
    tokens[starts[d]:starts[d+1]].
  """
  data_cfg = corpora.resolve_data_config(data_cfg)
  builder = corpora.prepare(data_cfg, data_dir)
  spec = tokenizer.spec
  key = f"{split}-{spec['kind']}-{spec['fingerprint']}-v{tokenizer.vocab_size}"
  path = os.path.join(_cache_root(data_cfg, builder), key)
  if not os.path.exists(os.path.join(path, "meta.json")):
    _write_token_cache(corpora.text_source(data_cfg, split, data_dir), tokenizer, path)
  with open(os.path.join(path, "meta.json")) as f:
    meta = json.load(f)
  starts = np.load(os.path.join(path, "starts.npy"))
  if meta["num_tokens"] == 0:
    return np.zeros((0,), meta["dtype"]), starts
  tokens = np.memmap(os.path.join(path, "tokens.bin"), dtype=meta["dtype"], mode="r", shape=(meta["num_tokens"],))
  return tokens, starts


def _write_token_cache(src, tokenizer, path: str) -> None:
  dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
  bos = [tokenizer.bos_id] if tokenizer.bos_id >= 0 else []
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # Written in a scratch dir and renamed, so an interrupted run never leaves a half cache behind.
  tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(path))
  try:
    lengths = []
    with open(os.path.join(tmp, "tokens.bin"), "wb") as f:
      for lo in range(0, len(src), _ENCODE_CHUNK):
        texts = [src[i] for i in range(lo, min(lo + _ENCODE_CHUNK, len(src)))]
        for ids in tokenizer.encode_batch(texts):
          f.write(np.asarray(bos + ids, dtype).tobytes())
          lengths.append(len(bos) + len(ids))
    starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    np.save(os.path.join(tmp, "starts.npy"), starts)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(dict(dtype=np.dtype(dtype).name, num_tokens=int(starts[-1]), num_documents=len(lengths),
                     tokenizer=tokenizer.spec), f)
    os.replace(tmp, path)
  except OSError:
    if not os.path.exists(os.path.join(path, "meta.json")):
      raise
  finally:  # gone after a successful rename; otherwise an interrupted or duplicate copy
    shutil.rmtree(tmp, ignore_errors=True)


class PackedWindows:
  """Example i: tokens[i*seq_len:(i+1)*seq_len] (index -1: an empty, fully masked row)."""

  def __init__(self, tokens: np.ndarray, seq_len: int, pad_id: int):
    self._tokens, self._seq_len, self._pad = tokens, seq_len, max(pad_id, 0)

  def __len__(self) -> int:
    return len(self._tokens) // self._seq_len

  def __getitem__(self, i: int) -> dict:
    if i < 0:
      return _empty(self._seq_len, self._pad)
    tok = np.asarray(self._tokens[i * self._seq_len:(i + 1) * self._seq_len], np.int32)
    return {"tokens": tok, "loss_mask": np.ones((self._seq_len,), np.float32)}


class PaddedDocuments:
  """Example i: document i (+ eos when it fits) truncated to seq_len, padded with pad_id (index -1: empty row)."""

  def __init__(self, tokens: np.ndarray, starts: np.ndarray, seq_len: int, pad_id: int, eos_id: int):
    self._tokens, self._starts, self._seq_len, self._pad = tokens, starts, seq_len, max(pad_id, 0)
    self._eos = eos_id

  def __len__(self) -> int:
    return len(self._starts) - 1

  def __getitem__(self, i: int) -> dict:
    if i < 0:
      return _empty(self._seq_len, self._pad)
    lo = int(self._starts[i])
    hi = min(int(self._starts[i + 1]), lo + self._seq_len)
    tok = np.full((self._seq_len,), self._pad, np.int32)
    n = hi - lo
    tok[:n] = self._tokens[lo:hi]
    if self._eos >= 0 and n < self._seq_len and hi == int(self._starts[i + 1]):
      tok[n] = self._eos  # an untruncated document ends with eos so the model learns where sentences stop
      n += 1
    mask = np.zeros((self._seq_len,), np.float32)
    mask[:n] = 1.0
    return {"tokens": tok, "loss_mask": mask}


def _empty(seq_len: int, pad: int) -> dict:
  return {"tokens": np.full((seq_len,), pad, np.int32), "loss_mask": np.zeros((seq_len,), np.float32)}


class _PadTail:
  """Index j of the order below `total`, and -1 (an empty row) beyond it."""

  def __init__(self, order, total: int):
    self._order, self._total = order, total

  def __call__(self, j: int) -> int:
    return int(self._order[j]) if j < self._total else -1


def make_dataset(data_cfg, tokenizer, *, seq_len: int, batch_size: int, split: str = "train", seed: int = 0,
                 shard_index: Optional[int] = None, shard_count: Optional[int] = None,
                 num_epochs: Optional[int] = None, shuffle: Optional[bool] = None,
                 data_dir: Optional[str] = None) -> grain.IterDataset:
  """Batches of token sequences for one process.

  Args:
    data_cfg: the data config block (`corpora.default_data_config()`).
    tokenizer: a tokenizer from `tokenizers.py`.
    seq_len: tokens per row.
    batch_size: GLOBAL batch size (all processes together); must be divisible by shard_count.
    split: "train" or "validation".
    seed: shuffle seed (the same seed gives the same global order on any number of processes).
    shard_index: this process's shard (default jax.process_index()).
    shard_count: number of shards (default jax.process_count()).
    num_epochs: passes over the split; None repeats forever. Finite streams end with a partly empty batch
      (loss_mask 0 rows) rather than dropping examples.
    shuffle: default True for "train", False for "validation".
    data_dir: overrides data_cfg.data_dir.
  Returns:
    A grain IterDataset of {"tokens": int32 [batch_size // shard_count, seq_len],
    "loss_mask": float32 [batch_size // shard_count, seq_len]}; `iter()` gives a checkpointable iterator.
  Raises:
    DataError: bad sizes, shard, split, or a split with too little data for one row.
  """
  if shard_index is None or shard_count is None:
    import jax  # only for the defaults: the pipeline itself never touches devices
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  for name, value in (("seq_len", seq_len), ("batch_size", batch_size), ("shard_count", shard_count)):
    if not isinstance(value, (int, np.integer)) or value <= 0:
      raise DataError(f"{name}={value!r} must be a positive integer")
  if batch_size % shard_count:
    raise DataError(f"batch_size={batch_size} is not divisible by shard_count={shard_count}")
  if not 0 <= shard_index < shard_count:
    raise DataError(f"shard_index={shard_index} is outside 0..{shard_count - 1}")
  if num_epochs is not None and (not isinstance(num_epochs, int) or num_epochs <= 0):
    raise DataError(f"num_epochs={num_epochs!r} must be None or a positive integer")
  if split not in corpora.SPLITS:
    raise DataError(f"split={split!r} is not one of {', '.join(corpora.SPLITS)}")
  data_cfg = corpora.resolve_data_config(data_cfg)

  tokens, starts = token_cache(data_cfg, tokenizer, split, data_dir)
  if data_cfg.packing == "pack":
    examples = PackedWindows(tokens, seq_len, tokenizer.pad_id)
  else:
    examples = PaddedDocuments(tokens, starts, seq_len, tokenizer.pad_id, tokenizer.eos_id)
  if len(examples) == 0:
    raise DataError(f"the {split} split of {data_cfg.name} has {len(tokens)} tokens: fewer than one row of "
                    f"seq_len={seq_len}")

  order = grain.MapDataset.range(len(examples))
  if (split == "train") if shuffle is None else shuffle:
    order = order.shuffle(seed=seed)  # a fresh permutation per epoch, a pure function of (seed, index)
  order = order.repeat(num_epochs)
  if num_epochs is not None:
    total = len(order)
    order = grain.MapDataset.range(-(-total // batch_size) * batch_size).map(_PadTail(order, total))
  local = order[shard_index::shard_count].map(examples.__getitem__)
  local = local.batch(batch_size // shard_count, drop_remainder=True)
  threads = int(data_cfg.get("num_threads", 0))
  return local.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads, 1) * 4))
