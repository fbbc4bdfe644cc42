"""clu metric writers for a run: TensorBoard event files (clu's `SummaryWriter`) and `metrics.jsonl` (a clu
`MetricWriter`, since clu has none for JSON lines).

Importing this module imports TensorFlow (behind clu's `SummaryWriter`); `metrics_writer` imports it only when a run
writes metrics, so decoding and evaluation never load TensorFlow.
"""
import json
import os

# TensorFlow prints oneDNN and absl-init notices to stderr at import unless told not to; a user's own setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from clu.metric_writers import SummaryWriter  # noqa: E402  (after the environment above)
from clu.metric_writers import interface  # noqa: E402

from kforcing_jax import files  # noqa: E402

__all__ = ["JsonlWriter", "SummaryWriter"]


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


def _plain(v):
  return v.item() if hasattr(v, "item") else v


class JsonlWriter(interface.MetricWriter):
  """Appends one JSON object per step and split to a file: `write_scalars(step, {"train/loss": v})` ->
  {"step": step, "split": "train", "loss": v}. Texts and hparams become records too; summaries, images, video,
  audio and histograms are for TensorBoard only.

  Args:
    path: the JSONL file (created, or appended to).
    initial_step: a resumed run's start step: records after it are dropped first, since the run redoes them.
  """

  def __init__(self, path: str, initial_step: int = 0):
    if initial_step > 0:
      _drop_after(path, initial_step)
    self._f = open(path, "a", encoding="utf-8")

  def _record(self, obj):
    self._f.write(json.dumps(obj) + "\n")
    self._f.flush()

  def write_scalars(self, step, scalars):
    by_split = {}
    for key, v in scalars.items():
      split, sep, name = key.partition("/")
      split, name = (split, name) if sep else ("train", key)
      by_split.setdefault(split, {})[name] = _plain(v)
    for split, values in by_split.items():
      self._record({"step": int(step), "split": split, **values})

  def write_texts(self, step, texts):
    self._record({"step": int(step), "split": "text", **dict(texts)})

  def write_hparams(self, hparams):
    self._record({"step": 0, "split": "hparams", **{k: str(v) for k, v in hparams.items()}})

  def write_summaries(self, step, values, metadata=None):
    pass

  def write_images(self, step, images):
    pass

  def write_videos(self, step, videos):
    pass

  def write_audios(self, step, audios, *, sample_rate):
    pass

  def write_histograms(self, step, arrays, num_buckets=None):
    pass

  def flush(self):
    self._f.flush()

  def close(self):
    self._f.close()
