"""Where training metrics go: clu metric writers (TensorBoard event files + `metrics.jsonl`), console lines and a
tqdm bar with ETA.

Only process 0 writes (multi-host runs share one workdir); on other processes every method is a no-op.
The JSONL file (one object per logged step, {"step", "split", ...}) is what `plots.py` reads.
"""
import os
import sys
from typing import Any, Mapping, Optional

import jax
from absl import logging


def _fmt(v) -> str:
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def _local_logdir(workdir: str) -> str:
  # JSONL is appended to, which object stores (gs://) do not support: it stays on the host; TF's event files
  # can go to gs:// directly.
  local = os.path.join(os.environ.get("KFJ_LOCAL_LOGDIR", "/tmp/kforcing_jax_logs"),
                       str(workdir).split("://", 1)[1].strip("/").replace("/", "_"))
  logging.warning("metrics.jsonl of %s is written to %s (appends are not supported on %s)", workdir, local,
                  str(workdir).split("://")[0])
  return local


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
    from kforcing_jax.training import clu_writers  # imports TensorFlow: only where a run writes metrics
    jsonl_dir = _local_logdir(workdir) if "://" in str(workdir) else str(workdir)
    os.makedirs(jsonl_dir, exist_ok=True)
    self._jsonl = clu_writers.JsonlWriter(os.path.join(jsonl_dir, "metrics.jsonl"), initial_step)
    try:
      self._tb = clu_writers.SummaryWriter(os.path.join(str(workdir), "tensorboard"))
    except Exception as e:  # TensorBoard is a convenience; never fail a run for it
      logging.warning("no TensorBoard event files: %s", e)
    if progress_bar is None:
      progress_bar = sys.stderr.isatty()
    if progress_bar:
      from tqdm import tqdm
      self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

  def write(self, step: int, scalars: Mapping[str, float], split: str = "train", console: bool = True,
            extra: Optional[Mapping[str, Any]] = None):
    """Logs one step's scalars (floats) under `split` ("train", "eval"); `extra` goes to the JSONL file only."""
    if not self.enabled:
      return
    scalars = {k: float(v) for k, v in scalars.items()}
    if self._tb is not None:
      self._tb.write_scalars(int(step), {f"{split}/{k}": v for k, v in scalars.items()})
    self._jsonl.write_scalars(int(step), {f"{split}/{k}": v for k, v in {**scalars, **(extra or {})}.items()})
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
