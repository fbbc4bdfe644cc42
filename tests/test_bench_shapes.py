"""The bench's random-parameter shapes: `--smollm2_size` is SmolLM2-135M's architecture and sweeps like the others."""
import importlib.util
import os

import pytest

from kforcing_jax import bench
from kforcing_jax import workdir as workdir_lib
from kforcing_jax.evaluation import benchmark

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_smollm2_size_is_the_distilled_teachers_architecture():
  spec = importlib.util.spec_from_file_location("smollm2_k4", os.path.join(REPO, "experiments", "configs",
                                                                             "smollm2_k4.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = benchmark.smollm2_size_config(4, "bfloat16")
  assert workdir_lib.arch_mismatch(cfg.to_dict(), mod.get_config("").model.to_dict()) == []
  assert (cfg.k_max, cfg.dtype, cfg.max_len, cfg.kv_heads, cfg.tie_embeddings) == (4, "bfloat16", 128, 3, True)


def test_smollm2_size_quick_sweep():
  # The tiny stand-in keeps the family: GQA and a tied head (random_params leaves the random embedding as the head).
  report = bench.bench(smollm2_size=True, quick=True, batch_sizes=["1"], ks=["2"], ar_samplers=["greedy"],
                       num_tokens=4, progress=False)
  assert report["name"] == "smollm2_size_quick"
  c = report["config"]
  assert (c["norm"], c["mlp"], c["num_kv_heads"], c["tie_embeddings"], c["k_max"]) == ("rmsnorm", "swiglu", 1, True, 2)
  assert set(report["results"]["1"]) == {"ar_greedy", "k2"}
  assert all(r["tokens_per_s"] > 0 for r in report["results"]["1"].values())


def test_one_shape_only():
  with pytest.raises(ValueError, match="exactly one of .*--smollm2_size"):
    bench.bench(paper_size=True, smollm2_size=True)


def test_feedback_layers_quick_sweep_and_bad_use():
  # SmolLM2's quick stand-in (GQA, tied head) with one token-feedback block of its two.
  report = bench.bench(smollm2_size=True, quick=True, batch_sizes=["1"], ks=["3"], ar_samplers=["greedy"],
                       num_tokens=6, progress=False, feedback_layers=1)
  assert report["name"] == "smollm2_size_quick_fb1" and report["config"]["feedback_layers"] == 1
  assert report["results"]["1"]["k3"]["tokens_per_s"] > 0
  with pytest.raises(ValueError, match="a checkpoint has its own"):
    bench.bench(workdir="runs/k4", feedback_layers=1)
  with pytest.raises(ValueError, match="feedback_layers=3"):
    bench.bench(demo_size=True, quick=True, feedback_layers=3)
