"""The trainer on tiny configs: loss goes down, exact resume, 8-device == 1-device, NaN stop, bad input -> exit 2.

Runs share trained workdirs through session fixtures (AR teacher -> k=1 -> k=2) over a small local_text corpus
(a few chapters of the KJV) with the bytes tokenizer, so the real data pipeline and iterator checkpoints are used.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from kforcing_jax.data import corpora
from kforcing_jax import workdir as checkpoint
from kforcing_jax.training import config_lib, optim, train
from kforcing_jax.workdir import BadInputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  # Every run builds fresh jitted closures; a persistent cache turns the repeats (same shapes) into cache hits.
  old = jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  yield
  jax.config.update("jax_compilation_cache_dir", old[0])
  jax.config.update("jax_persistent_cache_min_compile_time_secs", old[1])


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpus")
  lines = []
  for _, text in corpora.kjv_documents():
    lines.extend(text.splitlines())
    if len(lines) > 800:
      break
  (root / "kjv.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return root


def tiny(corpus, stage="ar", k=1, **kw):
  c = config_lib.base_config()
  c.stage, c.k = stage, k
  c.model.update(vocab_size=320, num_layers=2, d_model=32, num_heads=2, mlp_dim=64, max_len=32)
  c.data.update(name="local_text", files=str(corpus / "kjv.txt"), documents="line", validation_fraction=0.1,
                tokenizer="bytes", vocab_multiple=64, data_dir=str(corpus / "tfds"), num_threads=0)
  c.seq_len, c.batch_size, c.num_steps = 32, 8, 30
  c.optim.update(lr=3e-3, warmup_steps=3)
  c.log_every, c.eval_every, c.eval_batches, c.checkpoint_every = 1, 15, 2, 10
  c.progress_bar = False
  for key, value in kw.items():
    c[key] = value
  return c


def _metrics(workdir, split="train"):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  return [r for r in rows if r["split"] == split]


def _params(workdir, step=None):
  _, out = checkpoint.restore(workdir, step, items=("params",))
  return jax.tree.map(np.asarray, out["params"])


@pytest.fixture(scope="session")
def ar_run(corpus, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("runs") / "ar")
  return workdir, train.train_and_evaluate(tiny(corpus, num_steps=40), workdir)


@pytest.fixture(scope="session")
def k1_run(corpus, ar_run, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("runs") / "k1")
  return workdir, train.train_and_evaluate(tiny(corpus, "pflm", 1, teacher_workdir=ar_run[0]), workdir)


@pytest.fixture(scope="session")
def k2_run(corpus, k1_run, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("runs") / "k2")
  cfg = tiny(corpus, "pflm", 2, teacher_workdir=k1_run[0], num_steps=10, eval_every=10)
  return workdir, train.train_and_evaluate(cfg, workdir)


def test_ar_teacher_loss_goes_down(ar_run):
  workdir, final = ar_run
  evals = _metrics(workdir, "eval")
  assert evals[0]["step"] == 0 and evals[-1]["step"] == 40
  assert evals[-1]["loss"] < evals[0]["loss"] - 1.0
  assert sorted(checkpoint.manager(workdir).all_steps()) == [20, 30, 40]  # keep-3 of 10, 20, 30, 40
  _, meta = checkpoint.read_meta(workdir)
  assert meta["stage"] == "ar" and meta["k"] == 0 and meta["step"] == 40 and meta["tokenizer"]["kind"] == "bytes"
  assert os.path.isdir(os.path.join(workdir, "tensorboard")) and final["step"] == 40


def test_k1_student_starts_from_teacher_and_learns(ar_run, k1_run):
  workdir, final = k1_run
  evals = _metrics(workdir, "eval")
  assert evals[-1]["loss"] < evals[0]["loss"]
  teacher, student = _params(ar_run[0]), _params(workdir, 10)
  assert set(student) == set(teacher) | {"noise_encoder"}
  _, meta = checkpoint.read_meta(workdir)
  assert meta["teacher_workdir"] == ar_run[0] and meta["k"] == 1
  assert 0.0 <= final["eval/acc_slot1"] <= 1.0 and final["step"] == 30


def test_relative_teacher_path_is_stored_absolute(corpus, ar_run, tmp_path, monkeypatch):
  # The demo trains with relative workdirs (demo_out/ar); a later stage run from another directory must still
  # find the chain's AR teacher through the student's meta.
  ar_dir = ar_run[0]
  monkeypatch.chdir(os.path.dirname(ar_dir))
  student = str(tmp_path / "k1")
  cfg = tiny(corpus, "pflm", 1, teacher_workdir=os.path.basename(ar_dir), num_steps=2, eval_every=2,
             checkpoint_every=2, target_teacher="ar")
  train.train_and_evaluate(cfg, student)
  _, meta = checkpoint.read_meta(student)
  assert meta["teacher_workdir"] == ar_dir and meta["ar_teacher_workdir"] == ar_dir
  monkeypatch.chdir(tmp_path)
  assert checkpoint.resolve_ar_teacher(student) == ar_dir


def test_doubling_student_reproduces_its_teacher_at_init(k2_run):
  # The 2k student starts as the k teacher, whose first half of targets is its own argmax: slot 1 is exact.
  workdir, final = k2_run
  first = _metrics(workdir, "eval")[0]
  assert first["step"] == 0 and first["acc_slot1"] == 1.0
  assert "eval/acc_slot2" in final and "eval/acc_all" in final


def test_exact_resume(corpus, tmp_path, capsys):
  full, split = str(tmp_path / "full"), str(tmp_path / "split")
  cfg = tiny(corpus, num_steps=20, eval_every=0)
  train.train_and_evaluate(cfg, full)

  real_check = train._check_finite

  class Preempted(Exception):
    pass

  def preempt_after_10(step, metrics):
    if step > 10:
      raise Preempted()
    real_check(step, metrics)

  train._check_finite = preempt_after_10
  try:
    with pytest.raises(Preempted):
      train.train_and_evaluate(cfg, split)
  finally:
    train._check_finite = real_check
  assert checkpoint.manager(split).all_steps() == [10]
  train.train_and_evaluate(cfg, split)
  a, b = _params(full, 20), _params(split, 20)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  order = lambda w: {r["step"]: r["batch_checksum"] for r in _metrics(w)}
  assert order(full) == order(split) and len(order(full)) == 20

  # Issue 12 case 2: a damaged newest step (same-size garbling, then truncation) falls back to step 10 with one
  # line, the run continues and finishes (the bad step is moved aside, never deleted), reproducing step 20 exactly.
  from test_workdir import garble, truncate
  for n, damage in enumerate((garble, truncate)):
    params_dir = os.path.join(checkpoint.checkpoint_dir(split), "20", "params")
    damage(max((os.path.join(d, f) for d, _, fs in os.walk(params_dir) for f in fs), key=os.path.getsize))
    capsys.readouterr()
    train.train_and_evaluate(cfg, split)
    err = capsys.readouterr().err
    assert "fell back to step 10" in err and "resumed" in err, err
    jax.tree.map(np.testing.assert_array_equal, _params(split, 20), a)
    assert sorted(os.listdir(os.path.join(split, "corrupt"))) == ["20", "20.1"][:n + 1]
  assert order(split) == order(full) and len(_metrics(split)) == 20  # no duplicate records after the resumes
  # A rerun of a finished run is idempotent and says so.
  capsys.readouterr()
  train.train_and_evaluate(cfg, split)
  assert "nothing to do" in capsys.readouterr().err


def test_eight_devices_match_one_device(corpus, tmp_path):
  assert jax.device_count() == 8
  losses = {}
  for name, mesh, n in (("one", [["data", 1], ["model", 1]], 1), ("eight", [["data", 4], ["model", 2]], 8)):
    cfg = tiny(corpus, num_steps=6, eval_every=0, checkpoint_every=100, mesh=mesh, num_devices=n)
    train.train_and_evaluate(cfg, str(tmp_path / name))
    losses[name] = [r["loss"] for r in _metrics(str(tmp_path / name))]
  assert len(losses["one"]) == 6 and losses["one"][-1] < losses["one"][0]
  np.testing.assert_allclose(losses["eight"], losses["one"], atol=1e-5, rtol=0)


def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
  real = optim.make_schedule
  # From the update of step 15 on the learning rate is NaN, so the parameters after step 15 are NaN.
  monkeypatch.setattr(optim, "make_schedule",
                      lambda c, n: (lambda s: jax.numpy.where(s >= 14, jax.numpy.nan, real(c, n)(s))))
  workdir = str(tmp_path / "nan")
  with pytest.raises(train.DivergedError, match="step 15"):
    train.train_and_evaluate(tiny(corpus, num_steps=30, eval_every=0), workdir)
  assert checkpoint.manager(workdir).all_steps() == [10]
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(_params(workdir)))


@pytest.mark.parametrize("change, match", [
    (dict(k=4), "not a doubling"),
    (dict(model=dict(d_model=64)), "does not match"),
    (dict(targets="noise_inversion"), "needs an AR teacher"),
    (dict(teacher_workdir="/nonexistent/teacher"), "no checkpoints"),
])
def test_bad_teacher_is_refused(corpus, k1_run, tmp_path, change, match):
  cfg = tiny(corpus, "pflm", 2, teacher_workdir=k1_run[0])
  for key, value in change.items():
    if isinstance(value, dict):
      cfg[key].update(value)
    else:
      cfg[key] = value
  with pytest.raises(BadInputError, match=match):
    train.train_and_evaluate(cfg, str(tmp_path / "student"))
  assert not os.path.exists(os.path.join(tmp_path, "student", "checkpoints", "10"))


def test_workdir_of_another_run_is_refused_and_kept(corpus, ar_run, k1_run):
  before = sorted(checkpoint.manager(k1_run[0]).all_steps())
  with pytest.raises(BadInputError, match="another run"):
    train.train_and_evaluate(tiny(corpus, num_steps=40), k1_run[0])
  assert sorted(checkpoint.manager(k1_run[0]).all_steps()) == before


def _cli(*args):
  env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "kforcing_jax.train", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)


def test_cli_bad_input_exits_2(tmp_path):
  config = os.path.join(REPO, "experiments", "configs", "tiny_cpu.py")
  out = _cli("--config", f"{config}:stage=ar", "--workdir", str(tmp_path / "a"), "--config.no_such_key=1")
  assert out.returncode == 2 and "unknown config key" in out.stderr
  out = _cli("--config", f"{config}:stage=pflm,k=1", "--workdir", str(tmp_path / "b"),
             "--config.teacher_workdir=" + str(tmp_path / "missing"))
  assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("error: teacher_workdir")
  (tmp_path / "empty.txt").write_text("")
  out = _cli("--config", f"{config}:stage=ar", "--workdir", str(tmp_path / "c"), "--config.data.name=local_text",
             "--config.data.files=" + str(tmp_path / "empty.txt"), "--config.data.data_dir=" + str(tmp_path / "tfds"))
  assert out.returncode == 2 and "empty" in out.stderr.strip().splitlines()[-1]


def test_ema_checkpoints_serve_the_average(corpus, tmp_path):
  wd = str(tmp_path / "ema")
  train.train_and_evaluate(tiny(corpus, num_steps=2, checkpoint_every=1, keep_checkpoints=5, eval_every=0,
                                ema_decay=0.5), wd)
  ema = {s: _params(wd, s) for s in (1, 2)}
  raw2 = jax.tree.map(np.asarray, checkpoint.restore(wd, 2, items=("train_state",))[1]["train_state"]["raw_params"])
  # Step 2's served params are the average of step 1's and the raw params after step 2.
  jax.tree.map(lambda e2, e1, r2: np.testing.assert_allclose(e2, 0.5 * e1 + 0.5 * r2, rtol=1e-6, atol=1e-7),
               ema[2], ema[1], raw2)
  assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ema[2]), jax.tree.leaves(raw2)))


def test_tokenizer_that_does_not_fit_the_model_is_refused_before_training(corpus, tmp_path):
  # Issue 12 case 4: a 320-id bytes tokenizer with model.vocab_size 4096 trained, then load refused the result.
  cfg = tiny(corpus)
  cfg.model.vocab_size = 4096
  with pytest.raises(BadInputError, match="model.vocab_size=4096"):
    train.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w" / "checkpoints")
