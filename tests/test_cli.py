"""The sample / evaluate / bench entry points: a JSONL round trip, and every bad input is one line + exit 2."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from kforcing_jax.data.tokenizers import BytesTokenizer
from workdir_helpers import make_workdir

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


# ---- issue 12: every argument checked before any model loads (in process: the entry points' library functions) ----

def _no_model_loads(monkeypatch):
  import kforcing_jax
  def refuse(*a, **k):
    raise AssertionError("a model was loaded before the arguments were checked")
  monkeypatch.setattr(kforcing_jax, "load", refuse)


@pytest.mark.parametrize("kw, match", [
    (dict(prompt_len=0), "--prompt_len must be >= 1"),            # case 7
    (dict(num_tokens=0), "--num_tokens must be >= 1"),            # case 8
    (dict(out="missing_dir/eval.json"), "does not exist"),       # case 9
    (dict(num_samples=0), "--num_samples"),
    (dict(k=7), "K=7 outside 1..4"),
    (dict(readout="mode"), "unknown readout"),
])
def test_evaluate_checks_before_loading(dirs, monkeypatch, kw, match):
  from kforcing_jax import evaluate
  _no_model_loads(monkeypatch)
  kw = dict(kw)
  if "out" in kw:
    kw["out"] = os.path.join(dirs["root"], kw["out"])
  with pytest.raises(ValueError, match=match):
    evaluate.check_request(dirs["student"], dirs["teacher"], **kw)
  with pytest.raises(ValueError, match="different tokenizers"):
    evaluate.check_request(dirs["student"], dirs["other"])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_evaluate_refuses_a_read_only_out_folder(dirs, tmp_path):  # case 10
  from kforcing_jax import evaluate
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o500)
  with pytest.raises(ValueError, match="not writable"):
    evaluate.check_request(dirs["student"], dirs["teacher"], out=str(ro / "e.json"))


@pytest.mark.parametrize("kw, match", [
    (dict(repeats=0), "--repeats must be >= 1"),                  # case 11
    (dict(num_tokens=0), "--num_tokens must be >= 1"),            # case 12
    (dict(ks=["1", "x"]), "--ks: 'x' is not an integer"),         # number errors name the flag
    (dict(batch_sizes=["0"]), "--batch_sizes"),
    (dict(ks=["1", "9"]), "K=9 outside 1..4"),
    (dict(speculative=True), "--speculative needs --teacher_workdir"),
])
def test_bench_checks_before_loading(dirs, monkeypatch, kw, match):
  from kforcing_jax import bench
  _no_model_loads(monkeypatch)
  with pytest.raises(ValueError, match=match):
    bench.bench(workdir=dirs["student"], **kw)


def test_bench_never_overwrites_its_outputs(dirs, monkeypatch):  # case 13
  from kforcing_jax import bench
  _no_model_loads(monkeypatch)
  out = os.path.join(dirs["root"], "bench_out")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "bench_student.json"), "w") as f:
    f.write("mine")
  with pytest.raises(ValueError, match="refusing to overwrite"):
    bench.bench(workdir=dirs["student"], out=out)
  assert open(os.path.join(out, "bench_student.json")).read() == "mine"


def test_sample_checks_every_prompt_and_output_first(dirs, monkeypatch, tmp_path):
  from kforcing_jax import sample
  _no_model_loads(monkeypatch)
  pf = tmp_path / "prompts.txt"
  pf.write_text("In the beginning\n\nAnd God said\n" + "x" * 60 + "\n")
  prompts, names = sample.read_prompts([], str(pf))
  run = lambda **kw: sample.sample_to_jsonl(dirs["student"], prompts, 8, batch_size=1, names=names, **kw)
  with pytest.raises(ValueError, match=r"prompts.txt line 4: \d+ prompt tokens"):
    run()  # found before batch 1 is decoded, with its line number
  with pytest.raises(ValueError, match="does not exist"):
    run(out=str(tmp_path / "nope" / "s.jsonl"))
  with pytest.raises(ValueError, match="AR model"):
    sample.sample_to_jsonl(dirs["teacher"], ["hi"], 8, k=2)  # not "K=2 outside 1..0"
  with pytest.raises(ValueError, match="different tokenizers"):
    sample.sample_to_jsonl(dirs["student"], ["hi"], 8, speculative_with=dirs["other"])
  with pytest.raises(ValueError, match="speculative decoding drafts from the student's softmax"):
    sample.sample_to_jsonl(dirs["student"], ["hi"], 8, speculative_with=dirs["teacher"], readout="argmax")


@pytest.mark.parametrize("call, match", [
    (lambda m: m.generate(5, 8), "prompts must be a list of strings"),          # case 16
    (lambda m: m.generate(["hi"], 8, k=2.5), "k must be an integer"),           # case 17
    (lambda m: m.generate(["hi"], 8.5), "num_tokens must be an integer"),       # case 18
    (lambda m: m.generate(["hi"], None), "num_tokens must be an integer"),      # case 19
    (lambda m: m.generate(["hi"], 8, seed="x"), "seed must be an integer"),     # case 20
    (lambda m: m.generate(["hi"], 8, temperature=0.7), "tau"),                  # pflm: tau is not a temperature
    (lambda m: m.generate(["hi"], 8, mode="verify"), "needs a teacher"),
    (lambda m: m.generate(["hi"], 8, mode="beam"), "unknown mode"),
    (lambda m: m.generate(["hi"], 8, readout="top"), "unknown readout"),
])
def test_api_value_error_contract(dirs, call, match):
  import kforcing_jax
  with pytest.raises(ValueError, match=match):
    call(kforcing_jax.load(dirs["student"]))


def test_api_modes_and_readout(dirs, capsys):
  import kforcing_jax
  s, t = kforcing_jax.load(dirs["student"]), kforcing_jax.load(dirs["teacher"])
  ids = s.encode_prompts(["In the beginning", "And God"])
  spec = s.generate_ids(ids, 8, k=2, seed=1, speculative_with=t)
  assert spec.mode == "speculative" and spec.accepted is not None and spec.teacher_passes is not None
  assert np.all(spec.accepted <= 2 * spec.teacher_passes)
  ver = s.generate_ids(ids, 8, k=2, seed=1, verify_with=t)
  np.testing.assert_array_equal(ver.tokens, t.generate_ids(ids, 8, seed=1).tokens)
  capsys.readouterr()
  s.generate_ids(ids, 8, k=2, readout="sample")  # the tiny student's meta has no readout: trained for argmax
  assert capsys.readouterr().err.count("warning:") == 1


def test_cli_contract_quiet_and_one_error_line(dirs, tmp_path):
  out = str(tmp_path / "s.jsonl")
  missing_cfg = str(tmp_path / "nope.py")
  res = _run_all([
      ["kforcing_jax.sample", "--workdir", dirs["student"], "--prompt", "In the beginning", "--num_tokens", "4",
       "--out", out],
      ["kforcing_jax.train", "--config", missing_cfg, "--workdir", str(tmp_path / "w")],                    # case 3
      ["kforcing_jax.train", "--config", os.path.join(REPO, "experiments", "configs", "tiny_cpu.py"),
       "--workdir", str(tmp_path / "w"), "--config.no_such_key=1"],
      ["kforcing_jax.evaluate", "--workdir", dirs["student"], "--teacher_workdir", dirs["teacher"],
       "--prompt_len", "0"],
  ])
  (rc, _, err) = res[0]
  assert rc == 0, err
  # A plain `sample` prints at most its progress bar on stderr: no absl / orbax INFO lines.
  assert all("sampling" in line for line in err.strip().splitlines()), err
  assert len(open(out).readlines()) == 1
  for (rc, _, err), needle in zip(res[1:], [f"no such config file: {missing_cfg}", "unknown config key 'no_such_key'",
                                            "--prompt_len must be >= 1"]):
    assert rc == 2 and err.strip().splitlines() == [err.strip().splitlines()[-1]], err
    assert err.startswith("error: ") and needle in err and "\\n" not in err, err
