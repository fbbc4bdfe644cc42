"""The trainer's side of the data interface: which tokenizer a run uses, its datasets, and global batches.

Tokenizer choice follows the resume order of `train.py`: a resumed run reloads WORKDIR/tokenizer; a distillation
run uses its teacher's; a run initialised from `config.init_workdir` uses that one's; a run from scratch builds one
from `config.data`. Every run saves its tokenizer into its own workdir (process 0).
"""
from typing import Optional

import jax
import numpy as np

from kforcing_jax.training import sharding


def tokenizer_for_run(config, workdir: str, source_workdir: Optional[str], resuming: bool):
  """Loads or builds the run's tokenizer and saves it into `workdir`.

  Args:
    config: the experiment config (uses `config.data`).
    workdir: this run's directory.
    source_workdir: the teacher's / init workdir, or None.
    resuming: whether `workdir` already holds a checkpoint of this run.
  Returns:
    A tokenizer object (`.encode`, `.decode`, `.vocab_size`, `.mask_index`, `.spec`, `.save`).
  """
  from kforcing_jax.data import tokenizers
  if resuming:
    return tokenizers.load_tokenizer(workdir)
  if source_workdir:
    tok = tokenizers.load_tokenizer(source_workdir)
  else:
    # Multi-host: every process builds the same (deterministic) tokenizer; only process 0 writes it.
    tok = tokenizers.build_tokenizer(config.data, workdir, save=jax.process_index() == 0)
  if jax.process_index() == 0:
    tok.save(workdir)
  return tok


def make_datasets(config, tokenizer):
  """(train, validation) grain IterDatasets of this process's shard of each global batch.

  Args:
    config: the experiment config (`data`, `seq_len`, `batch_size`, `seed`).
    tokenizer: from `tokenizer_for_run`.
  Returns:
    Two datasets yielding {"tokens": int32 [local_batch, seq_len], "loss_mask": float32 [local_batch, seq_len]}.
  """
  from kforcing_jax.data import pipeline
  kw = dict(seq_len=config.seq_len, batch_size=config.batch_size, seed=config.seed,
            shard_index=jax.process_index(), shard_count=jax.process_count())
  return (pipeline.make_dataset(config.data, tokenizer, split="train", **kw),
          pipeline.make_dataset(config.data, tokenizer, split="validation", **kw))


def to_global(batch: dict, mesh, rules, global_batch: int) -> dict:
  """Assembles the global batch from each process's rows (batch axis sharded as the rules say).

  Args:
    batch: this process's {"tokens", "loss_mask"} numpy arrays.
    mesh: device mesh.
    rules: logical->mesh rules.
    global_batch: rows across all processes.
  Returns:
    The same keys as sharded global `jax.Array`s.
  """
  out = {}
  for key in ("tokens", "loss_mask"):
    x = np.asarray(batch[key])
    out[key] = jax.make_array_from_process_local_data(
        sharding.batch_sharding(mesh, rules, x.ndim), x, (global_batch,) + x.shape[1:])
  return out
