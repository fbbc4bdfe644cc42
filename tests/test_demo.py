"""The main job end to end: `python -m kforcing_jax.demo --quick` (alone: `pytest -m slow tests/test_demo.py`)."""
import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}


@pytest.mark.slow
def test_demo_quick_and_resume(tmp_path):
  out = str(tmp_path / "demo")
  cmd = [sys.executable, "-m", "kforcing_jax.demo", "--quick", "--out", out]
  first = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=1800)
  assert first.returncode == 0, first.stderr[-3000:]
  with open(os.path.join(out, "summary.json")) as f:
    summary = json.load(f)
  for name in ("teacher", "k2", "k4"):
    s = summary[name]
    # A 20-step smoke run learns little: only ranges are checked, not quality.
    assert s["gen_ppl"] >= 1 and s["entropy"] >= 0 and 0 <= s["slot_agreement"] <= 1, (name, s)
    assert s["tokens_per_s"] > 0 and s["speedup"] > 0, (name, s)
  for name, k in (("k2", 2), ("k4", 4)):
    s = summary[name]
    assert len(s["slot_kl"]) == k and all(v >= 0 for v in s["slot_kl"]), s
    assert 1 <= s["speculative_tokens_per_pass"] <= k + 1 and 1 <= s["verify_tokens_per_pass"] <= k + 1, s
  for mode in ("speculative", "verify"):  # the lossless modes against AR, batch 1, in the same run
    assert summary["k4"][f"{mode}_tokens_per_s"] > 0 and summary["k4"][f"{mode}_speedup"] > 0, summary["k4"]
  for png in ("speedup.png", "slot_agreement.png"):
    assert os.path.exists(os.path.join(out, png))
  # A rerun resumes: every stage is skipped and the cached evaluation / benchmark are reused.
  again = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=1800)
  assert again.returncode == 0, again.stderr[-3000:]
  log = again.stdout + again.stderr
  assert log.count("already trained") == 4 and "reusing" in log


def test_demo_bad_flag_exits_2():
  res = subprocess.run([sys.executable, "-m", "kforcing_jax.demo", "--no_such_flag"], capture_output=True,
                       text=True, env=ENV, timeout=300)
  assert res.returncode == 2 and res.stderr.strip().startswith("error:")
