"""The run directory: checksummed steps, fallback past a garbled or truncated newest step, compatibility checks."""
import os

import jax
import numpy as np
import pytest

import kforcing_jax
from helpers import random_params, tiny_config
from kforcing_jax import workdir
from kforcing_jax.data.tokenizers import BytesTokenizer


def _two_step_workdir(path):
  tok = BytesTokenizer()
  cfg = tiny_config(vocab_size=tok.vocab_size, k_max=0, max_len=32)
  meta = {"model": cfg.to_dict(), "tokenizer": tok.spec, "stage": "ar", "k": 0}
  workdir.write_new(str(path), jax.device_get(random_params(cfg, 0)[1]["params"]), meta, tok, step=1)
  w = workdir.Writer(str(path), max_to_keep=None, async_save=False)
  w.save(2, jax.device_get(random_params(cfg, 1)[1]["params"]), meta)
  w.close()
  return str(path)


def _largest_param_file(wd, step):
  root = os.path.join(workdir.checkpoint_dir(wd), str(step), "params")
  paths = [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs]
  return max(paths, key=os.path.getsize)


def garble(path):
  """Overwrites 16 KiB (or the middle half of a smaller file) in place: same size, other bytes."""
  size = os.path.getsize(path)
  n = min(16 << 10, size // 2)
  with open(path, "r+b") as f:
    f.seek((size - n) // 2)
    old = f.read(n)
    f.seek((size - n) // 2)
    f.write(bytes((b + 1) % 256 for b in old))
  assert os.path.getsize(path) == size


def truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", [garble, truncate])
def test_load_falls_back_past_a_damaged_newest_step(tmp_path, capsys, damage):
  wd = _two_step_workdir(tmp_path / "run")
  want = kforcing_jax.load(wd, step=1).params
  damage(_largest_param_file(wd, 2))
  model = kforcing_jax.load(wd)
  err = capsys.readouterr().err
  assert model.step == 1, "a damaged step must never load"
  jax.tree.map(np.testing.assert_array_equal, model.params, want)
  assert err.count("\n") == 1 and "step 2" in err and "fell back to step 1" in err
  assert sorted(workdir.steps(wd)) == [1, 2]  # a reader never moves or deletes anything
  damage(_largest_param_file(wd, 1))
  with pytest.raises(workdir.CheckpointError, match="no usable checkpoint"):
    kforcing_jax.load(wd)


def test_quarantine_moves_only_the_failed_newer_steps(tmp_path, capsys):
  wd = _two_step_workdir(tmp_path / "run")
  garble(_largest_param_file(wd, 2))
  step, _ = workdir.restore(wd, items=("meta",), move_bad=True)
  assert step == 1 and workdir.steps(wd) == [1]
  assert os.listdir(tmp_path / "run" / "corrupt") == ["2"]
  assert "moved 1 bad step" in capsys.readouterr().err
  assert workdir.verify(wd, 1) is None


def test_tokenizer_must_fit_the_model_exactly():
  tok = BytesTokenizer()
  workdir.check_tokenizer_fits(tok.spec, tiny_config(vocab_size=tok.vocab_size))
  # Issue 12 case 4: train accepted a larger model vocabulary that load then refused; now both refuse it.
  with pytest.raises(workdir.BadInputError, match="model.vocab_size=4096"):
    workdir.check_tokenizer_fits(tok.spec, tiny_config(vocab_size=4096))
  with pytest.raises(workdir.BadInputError, match="mask"):
    workdir.check_tokenizer_fits(tok.spec, tiny_config(vocab_size=tok.vocab_size, mask_index=3))
  other = BytesTokenizer(vocab_multiple=64)
  with pytest.raises(workdir.BadInputError, match="different tokenizers"):
    workdir.check_same_tokenizer(tok.spec, other.spec, "student", "teacher")
