"""The trainer's side of the data interface: its datasets and global batches (the run's tokenizer comes from
`kforcing_jax.workdir.tokenizer_for_run`).
"""
import jax
import numpy as np

from kforcing_jax.training import sharding


def make_datasets(config, tokenizer):
  """(train, validation) grain IterDatasets of this process's shard of each global batch.

  Args:
    config: the experiment config (`data`, `seq_len`, `batch_size`, `seed`).
    tokenizer: from `workdir.tokenizer_for_run`.
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
