"""Checkpoints: one orbax CheckpointManager per workdir (`WORKDIR/checkpoints/<step>/`).

Items (a Composite checkpoint; any subset may be saved, `params` and `meta` always are):
  params      the model parameters (a plain pytree)
  train_state optimizer state, step and RNG (trainer only)
  data        the grain iterator state (trainer only)
  meta        JSON: {"model": ModelConfig dict, "tokenizer": spec, "config": full experiment config, ...}
A restore that fails on the newest step (a corrupt or half-written checkpoint) falls back to the previous step
with a warning; nothing is ever deleted here except by orbax's own keep-N policy after a successful save.
"""
from typing import Any, Optional, Sequence

import os

import jax
from absl import logging
from etils import epath
import orbax.checkpoint as ocp


class CheckpointError(ValueError):
  """No usable checkpoint in a workdir."""


def exists(path: str) -> bool:
  """Whether a directory exists, local or on an object store (epath; gs:// needs gcsfs, the `tpu` extra)."""
  return epath.Path(path).is_dir()


def checkpoint_dir(workdir: str) -> str:
  # orbax wants absolute paths; a relative local workdir (e.g. the demo's default ./demo_out) is resolved here.
  workdir = str(workdir)
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)
  return str(epath.Path(workdir) / "checkpoints")


def manager(workdir: str, max_to_keep: Optional[int] = 3, async_save: bool = True,
            create: bool = True) -> ocp.CheckpointManager:
  """The workdir's CheckpointManager (async saves, keep-N).

  Args:
    workdir: the run directory (local path or gs://).
    max_to_keep: how many steps to keep (None: all).
    async_save: save in a background thread.
    create: create the directory if missing.
  Returns:
    An `ocp.CheckpointManager`.
  """
  opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=opts)


def save(mngr: ocp.CheckpointManager, step: int, params, meta: dict, train_state=None, data_state=None,
         force: bool = True) -> bool:
  """Saves one step; `train_state` / `data_state` are optional items (a data state is a grain checkpoint arg)."""
  items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
  if train_state is not None:
    items["train_state"] = ocp.args.StandardSave(train_state)
  if data_state is not None:
    items["data"] = data_state
  return mngr.save(step, args=ocp.args.Composite(**items), force=force)


def restore(workdir: str, step: Optional[int] = None, abstract_params=None, abstract_train_state=None,
            data_state=None, items: Sequence[str] = ("params", "meta")) -> tuple[int, dict]:
  """Restores the newest readable step (or `step`), falling back to older steps when one is corrupt.

  Args:
    workdir: the run directory.
    step: a specific step, or None for the newest readable one.
    abstract_params: ShapeDtypeStructs (with shardings) to restore params onto; None restores as saved.
    abstract_train_state: likewise for "train_state".
    data_state: a grain restore arg for "data".
    items: which items to read.
  Returns:
    (step, {item: value}).
  Raises:
    CheckpointError: no checkpoint, or none readable.
  """
  ckdir = checkpoint_dir(workdir)
  if not exists(ckdir):
    raise CheckpointError(f"no checkpoint in {workdir} (missing {ckdir})")
  mngr = manager(workdir, max_to_keep=None, async_save=False, create=False)
  steps = sorted(mngr.all_steps(), reverse=True)
  if step is not None:
    if step not in steps:
      raise CheckpointError(f"step {step} not in {workdir} (have {sorted(steps)})")
    steps = [step]
  if not steps:
    raise CheckpointError(f"no checkpoint in {workdir}")
  args = {}
  for name in items:
    if name == "params":
      args[name] = ocp.args.StandardRestore(abstract_params)
    elif name == "train_state":
      args[name] = ocp.args.StandardRestore(abstract_train_state)
    elif name == "meta":
      args[name] = ocp.args.JsonRestore()
    elif name == "data":
      args[name] = data_state
  errors = []
  for s in steps:
    try:
      out = mngr.restore(s, args=ocp.args.Composite(**args))
      if errors:
        logging.warning("checkpoint step(s) %s unreadable; restored step %d instead", [e[0] for e in errors], s)
      mngr.close()
      return s, {k: out[k] for k in items}
    except Exception as e:  # orbax raises many types for a truncated / corrupt step
      errors.append((s, f"{type(e).__name__}: {e}"))
      logging.warning("checkpoint step %d in %s is unreadable (%s)", s, workdir, errors[-1][1][:200])
  mngr.close()
  raise CheckpointError(f"no readable checkpoint in {workdir}: " + "; ".join(f"step {s}: {m[:120]}" for s, m in errors))


def read_meta(workdir: str, step: Optional[int] = None) -> tuple[int, dict]:
  """Reads only the JSON metadata of the newest readable step."""
  s, out = restore(workdir, step, items=("meta",))
  return s, out["meta"]


def to_abstract(tree: Any, shardings=None):
  """ShapeDtypeStructs of a tree (optionally carrying shardings) for `restore`."""
  if shardings is None:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
