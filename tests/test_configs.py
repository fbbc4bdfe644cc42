"""Experiment configs: every file loads for every recipe, RECIPES is applied to pflm stages, optim values checked."""
import importlib.util
import math
import os

import pytest

from kforcing_jax.training import config_lib, optim, train
from kforcing_jax.workdir import BadInputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("tiny_cpu", "ar_lm1b", "ar_owt", "pflm_lm1b", "pflm_owt", "smollm2_k4")
# Configs that run the kf recipe at another peak lr than RECIPES["kf"] (their docstrings say why).
KF_LR = {"tiny_cpu": 3e-3, "smollm2_k4": 3e-4}


def get_config(name, arg=""):
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "experiments", "configs", name + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds_a_valid_model(name):
  c = get_config(name, "stage=pflm,k=2" if name == "tiny_cpu" else "")
  train.state_lib.model_config(c, int(c.k) if c.stage == "pflm" else 0)
  optim.validate(c.optim)


@pytest.mark.parametrize("name, arg", [("pflm_lm1b", ""), ("pflm_owt", ""), ("tiny_cpu", "stage=pflm,"),
                                       ("smollm2_k4", "k=2,")])
@pytest.mark.parametrize("recipe", sorted(config_lib.RECIPES))
def test_recipe_arg_sets_the_recipe_values(name, arg, recipe):
  c = get_config(name, f"{arg}recipe={recipe}")
  # The demo's 30-80-step stages run kf at a 3x peak lr (kforcing_jax/demo_config.py), SmolLM2's pretrained backbone
  # at a lower one (experiments/configs/smollm2_k4.py); all else is the recipe's.
  want = {**config_lib.RECIPES[recipe], **({"optim.lr": KF_LR[name]} if recipe == "kf" and name in KF_LR else {})}
  for key, value in want.items():
    block = c
    for part in key.split("."):
      block = block[part]
    assert block == value, key
  assert get_config(name, f"{arg}recipe=reference").loss == "ce"
  assert get_config(name, f"{arg}recipe=kf").readout == "sample"


def test_smollm2_chain_and_model():
  # Each stage's teacher is the previous one under runs=DIR; the model block is the converted SmolLM2's.
  assert [get_config("smollm2_k4", f"k={k},runs=/r").teacher_workdir for k in (1, 2, 4)] == [
      "/r/smollm2", "/r/smollm2_k1", "/r/smollm2_k2"]
  c = get_config("smollm2_k4", "")
  assert c.data.tokenizer == "teacher" and c.stage == "pflm"
  cfg = train.state_lib.model_config(c, 1)
  assert (cfg.vocab_size, cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.mlp_dim) == (
      49152, 30, 576, 9, 3, 1536)
  assert cfg.norm == "rmsnorm" and cfg.mlp == "swiglu" and cfg.tie_embeddings and not cfg.head_bias
  with pytest.raises(ValueError, match="k = 1 -> 2 -> 4"):
    get_config("smollm2_k4", "k=3")


def test_unknown_recipe_and_ar_stage():
  with pytest.raises(ValueError, match="unknown recipe"):
    get_config("pflm_lm1b", "recipe=fast")
  # An AR stage has no distillation objective: the recipe leaves it alone.
  assert get_config("tiny_cpu", "stage=ar,recipe=kf").to_dict() == get_config("tiny_cpu", "stage=ar").to_dict()


@pytest.mark.parametrize("field, value, match", [
    ("lr", math.nan, "optim.lr must be a finite number > 0"),   # issue 12 case 5
    ("lr", -1.0, "optim.lr must be a finite number > 0"),       # issue 12 case 6
    ("lr", math.inf, "optim.lr"), ("b2", 1.0, "optim.b2"), ("eps", 0.0, "optim.eps"),
    ("warmup_steps", -3, "optim.warmup_steps"), ("weight_decay", -0.1, "optim.weight_decay"),
    ("schedule", "linear", "optim.schedule"),
])
def test_bad_optim_values_are_refused_before_training(field, value, match):
  c = get_config("tiny_cpu", "stage=ar")
  c.optim[field] = value
  with pytest.raises(BadInputError, match=match):
    train.validate_config(c)
