"""Where training metrics go: TensorBoard event files, `metrics.jsonl`, console lines and a tqdm bar with ETA.

Only process 0 writes (multi-host runs share one workdir); on other processes every method is a no-op.
The JSONL file (one object per logged step, {"step", "split", ...}) is what `plots.py` reads.
"""
import json
import os
import sys
import time
from typing import Mapping, Optional

import jax
from absl import logging

from kforcing_jax import files


def _fmt(v) -> str:
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def _drop_after(path: str, step: int) -> None:
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      if int(json.loads(line)["step"]) <= step:
        keep.append(line)
    except (ValueError, KeyError, TypeError):
      pass  # a line cut by a crash
  if len(keep) != len(lines):
    files.write_text(path, "".join(keep))


class MetricsWriter:
  """Writes scalars for one run.

  Args:
    workdir: the run directory (event files under WORKDIR/tensorboard, metrics in WORKDIR/metrics.jsonl).
    total_steps: for the progress bar.
    initial_step: where the bar starts (resumed runs).
    progress_bar: True / False, or None for "when stderr is a terminal".
    enabled: None for "process 0 only".
  """

  def __init__(self, workdir: str, total_steps: int, initial_step: int = 0, progress_bar: Optional[bool] = None,
               enabled: Optional[bool] = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._tb = self._jsonl = self._bar = None
    if not self.enabled:
      return
    if "://" in str(workdir):
      # Event files and the JSONL are appended to, which object stores (gs://) do not support: keep them on the
      # host and say where; checkpoints still go to the workdir.
      local = os.path.join(os.environ.get("KFJ_LOCAL_LOGDIR", "/tmp/kforcing_jax_logs"),
                           str(workdir).split("://", 1)[1].strip("/").replace("/", "_"))
      logging.warning("metrics of %s are written to %s (appends are not supported on %s)", workdir, local,
                      str(workdir).split("://")[0])
      workdir = local
    os.makedirs(workdir, exist_ok=True)
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"), flush_secs=30)
    except Exception as e:  # TensorBoard is a convenience; never fail a run for it
      logging.warning("no TensorBoard event files: %s", e)
    path = os.path.join(workdir, "metrics.jsonl")
    if initial_step > 0:
      _drop_after(path, initial_step)  # a resumed run redoes the steps after its checkpoint: no duplicate records
    self._jsonl = open(path, "a", encoding="utf-8")
    if progress_bar is None:
      progress_bar = sys.stderr.isatty()
    if progress_bar:
      from tqdm import tqdm
      self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)
    self._t0 = time.time()

  def write(self, step: int, scalars: Mapping[str, float], split: str = "train", console: bool = True,
            extra: Optional[Mapping] = None):
    """Logs one step's scalars (floats) under `split` ("train", "eval"); `extra` goes to the JSONL file only."""
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(f"{split}/{k}", v, step)
    self._jsonl.write(json.dumps({"step": int(step), "split": split, **scalars, **(extra or {})}) + "\n")
    self._jsonl.flush()
    if console:
      keys = [k for k in scalars if not k.startswith("loss_slot") and k != "weight"]
      line = f"[{split} {step}] " + " ".join(f"{k}={_fmt(scalars[k])}" for k in keys)
      if self._bar is not None:
        self._bar.write(line)
      else:
        print(line, flush=True)

  def advance(self, step: int, loss: Optional[float] = None):
    """Moves the progress bar to `step` (ETA comes from tqdm)."""
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      if loss is not None:
        self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

  def close(self):
    if not self.enabled:
      return
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
    self._jsonl.close()
