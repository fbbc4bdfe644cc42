"""The run's metric writers: clu's TensorBoard writer and the JSONL one agree, and a resume leaves no duplicates."""
import json
import subprocess
import sys
import os

from clu.metric_writers import interface
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorflow.python.framework import tensor_util

from kforcing_jax.training import clu_writers
from kforcing_jax.training.metrics_writer import MetricsWriter


def _jsonl(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _tensorboard(workdir):
  ea = EventAccumulator(os.path.join(workdir, "tensorboard"))
  ea.Reload()
  return {tag: [(e.step, float(tensor_util.MakeNdarray(e.tensor_proto))) for e in ea.Tensors(tag)]
          for tag in ea.Tags()["tensors"]}


def test_tensorboard_and_jsonl_hold_the_same_scalars(tmp_path):
  w = MetricsWriter(str(tmp_path), 10, 0, progress_bar=False, enabled=True)
  w.write(0, {"loss": 2.0}, "eval")
  w.write(5, {"loss": 1.5, "lr": 0.25}, "train", extra={"batch_checksum": 123})
  w.write(10, {"loss": 0.5}, "eval", console=False)
  w.close()
  assert isinstance(w._jsonl, interface.MetricWriter) and isinstance(w._tb, interface.MetricWriter)
  assert _jsonl(tmp_path) == [{"step": 0, "split": "eval", "loss": 2.0},
                              {"step": 5, "split": "train", "loss": 1.5, "lr": 0.25, "batch_checksum": 123},
                              {"step": 10, "split": "eval", "loss": 0.5}]
  tb = _tensorboard(tmp_path)
  assert tb == {"eval/loss": [(0, 2.0), (10, 0.5)], "train/loss": [(5, 1.5)], "train/lr": [(5, 0.25)]}  # float32 in TF


def test_a_resume_drops_the_records_after_its_checkpoint(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  w = clu_writers.JsonlWriter(path)
  for step in (10, 20, 30):
    w.write_scalars(step, {"train/loss": float(step)})
  w.close()
  with open(path, "a") as f:
    f.write('{"step": 4')  # a line cut by a crash
  w = clu_writers.JsonlWriter(path, initial_step=20)
  w.write_scalars(30, {"train/loss": 3.0, "eval/loss": 4.0})
  w.close()
  assert _jsonl(tmp_path) == [{"step": 10, "split": "train", "loss": 10.0}, {"step": 20, "split": "train", "loss": 20.0},
                              {"step": 30, "split": "train", "loss": 3.0}, {"step": 30, "split": "eval", "loss": 4.0}]


def test_disabled_writer_writes_nothing(tmp_path):
  w = MetricsWriter(str(tmp_path / "run"), 10, 0, progress_bar=False, enabled=False)
  w.write(1, {"loss": 1.0})
  w.close()
  assert not os.path.exists(tmp_path / "run")


def test_tensorflow_is_imported_only_by_a_run_that_writes_metrics():
  code = ("import sys, kforcing_jax, kforcing_jax.training.train, kforcing_jax.sample, kforcing_jax.evaluate, "
          "kforcing_jax.bench; print('tensorflow' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
  assert out.stdout.strip() == "False", out.stderr[-2000:]
