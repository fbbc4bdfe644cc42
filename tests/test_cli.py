"""The sample / evaluate / bench entry points: a JSONL round trip, and every bad input is one line + exit 2."""
import json
import os
import subprocess
import sys

import pytest

from kforcing_jax.data.tokenizers import BytesTokenizer
from workdir_helpers import make_workdir

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("cli")
  return {"student": make_workdir(root / "student", 4, 0), "teacher": make_workdir(root / "teacher", 0, 3),
          "other": make_workdir(root / "other", 0, 5, tokenizer=BytesTokenizer(vocab_multiple=64)),
          "empty": str(root / "empty"), "root": str(root)}


def _run_all(cmds, parallel=4):
  """Runs the commands a few at a time (each one pays JAX start-up); returns (returncode, stdout, stderr) tuples."""
  out = []
  for i in range(0, len(cmds), parallel):
    procs = [subprocess.Popen([sys.executable, "-m", *c], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=ENV) for c in cmds[i:i + parallel]]
    for p in procs:
      stdout, stderr = p.communicate(timeout=600)
      out.append((p.returncode, stdout, stderr))
  return out


def test_sample_writes_jsonl_and_verify_equals_ar(dirs):
  prompts = os.path.join(dirs["root"], "prompts.txt")
  with open(prompts, "w") as f:
    f.write("In the beginning\n\nAnd God said\nLet there be\n")
  outs = [os.path.join(dirs["root"], f"{n}.jsonl") for n in ("ar", "verify")]
  base = ["kforcing_jax.sample", "--prompt_file", prompts, "--num_tokens", "12", "--batch_size", "2"]
  res = _run_all([base + ["--workdir", dirs["teacher"], "--out", outs[0]],
                  base + ["--workdir", dirs["student"], "--verify_with", dirs["teacher"], "--k", "3",
                          "--out", outs[1]]])
  for rc, _, err in res:
    assert rc == 0, err
  ar, ver = ([json.loads(line) for line in open(o)] for o in outs)
  assert [r["prompt"] for r in ar] == ["In the beginning", "And God said", "Let there be"]
  assert [r["completion"] for r in ar] == [r["completion"] for r in ver]
  assert all(r["mode"] == "verify" and 1 <= r["teacher_passes"] <= 12 for r in ver)
  # The output is never overwritten.
  (rc, _, err), = _run_all([base + ["--workdir", dirs["teacher"], "--out", outs[0]]])
  assert rc == 2 and "exists" in err


def test_bad_inputs_exit_2(dirs):
  s, t = dirs["student"], dirs["teacher"]
  sample = ["kforcing_jax.sample", "--workdir", s, "--num_tokens", "8"]
  cases = {
      "k": sample + ["--prompt", "hi", "--k", "5"],
      "temperature": sample + ["--prompt", "hi", "--temperature", "0"],
      "nan": sample + ["--prompt", "hi", "--temperature", "nan"],
      "too long": sample + ["--prompt", "x" * 60],
      "empty prompt": sample + ["--prompt", ""],
      "batch": sample + ["--prompt", "hi", "--batch_size", "0"],
      "no checkpoint": ["kforcing_jax.sample", "--workdir", dirs["empty"], "--prompt", "hi"],
      "tokenizers": sample + ["--prompt", "hi", "--verify_with", dirs["other"]],
      "unknown flag": sample + ["--prompt", "hi", "--no_such_flag=1"],
      "no prompt": sample,
      "eval tokenizers": ["kforcing_jax.evaluate", "--workdir", s, "--teacher_workdir", dirs["other"]],
      "eval no checkpoint": ["kforcing_jax.evaluate", "--workdir", dirs["empty"], "--teacher_workdir", t],
      "eval k": ["kforcing_jax.evaluate", "--workdir", s, "--teacher_workdir", t, "--k", "7"],
      "bench batch": ["kforcing_jax.bench", "--workdir", s, "--batch_sizes", "0"],
      "bench k": ["kforcing_jax.bench", "--workdir", s, "--ks", "1,9"],
      "bench both": ["kforcing_jax.bench", "--workdir", s, "--paper_size"],
  }
  for name, (rc, _, err) in zip(cases, _run_all(list(cases.values()))):
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert rc == 2, f"{name}: rc={rc}\n{err[-2000:]}"
    assert len(lines) == 1, f"{name}: {err[-2000:]}"
