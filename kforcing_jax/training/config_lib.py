"""Shared pieces of the experiment configs (experiments/configs/*.py): the base ConfigDict and arg parsing.

Fields of the base config (every one can be overridden with --config.FIELD=VALUE; unknown fields are rejected):
  stage             "ar" (AR teacher) | "pflm" (push-forward student)
  k                 pflm: the student's window (1 from an AR teacher, 2k from a k-model teacher)
  targets           pflm: "self_forcing" | "noise_inversion"
  loss              pflm: "ce" (against target tokens, the reference) | "kl" (dense, against target conditionals)
  readout           pflm: "argmax" (the reference) | "sample" (inverse CDF of the hint softmax at u); recorded in meta
  rollout           pflm: "teacher" (targets along the teacher's own rollout) | "student" (along the student's readout)
  target_teacher    pflm: "previous" (the teacher_workdir model) | "ar" (the AR teacher at the root of the chain)
  ar_teacher_workdir  pflm, target_teacher=ar: the AR teacher (default: found through the teachers' meta)
  tau_range         pflm: [min, max] of the per-row tau (uniform); [1, 1] = fixed tau 1 (the reference)
  slot_weighting    pflm: "uniform" (every slot alike, the reference) | "prefix" (slot i weighted k - i + 1)
  teacher_workdir   pflm: the teacher's workdir (its tokenizer is reused)
  init_workdir      ar: start from these params instead of scratch (ignored when resuming)
  seed              params init, noises, data order
  model             `ModelConfig` fields except k_max (set from stage / k)
  data              the data block (kforcing_jax/data/corpora.py documents its fields)
  seq_len, batch_size (global), num_steps
  optim             lr, warmup_steps, schedule (cosine|constant), min_lr_ratio, b1, b2, eps, weight_decay, grad_clip
  ema_decay         0: off; else checkpoints, evals and the next stage use the params' EMA at this decay
  log_every, eval_every (0: never), eval_batches, checkpoint_every, keep_checkpoints
  mesh, sharding_rules  [(axis, size)] and [(logical, mesh axis)] (kforcing_jax/training/sharding.py)
  num_devices       use the first N devices only (-1: all; for single-host debugging)
  progress_bar      tqdm bar: True / False / None (= when stderr is a terminal)
"""
import ml_collections
from ml_collections import config_dict

from kforcing_jax.models import ModelConfig
from kforcing_jax.training import sharding


def parse_arg(arg: str, **defaults) -> ml_collections.ConfigDict:
  """Parses a big_vision style config arg "stage=pflm,k=4,runlocal" against typed defaults.

  Args:
    arg: comma-separated key=value pairs (a bare key sets a bool to True).
    **defaults: the allowed keys with their default values (the type of each default is enforced).
  Returns:
    A ConfigDict of the values.
  Raises:
    ValueError: unknown key or a value of the wrong type.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config arg {key!r}; known: {sorted(defaults)}")
    kind = type(defaults[key])
    if kind is bool:
      out[key] = value.lower() in ("", "1", "true", "yes")
    else:
      out[key] = kind(value)
  return out


def apply_strategy(config: ml_collections.ConfigDict, arg: ml_collections.ConfigDict) -> None:
  """Sets config.mesh / config.sharding_rules from the config args strategy, model_parallel, num_slices.

  An empty strategy leaves the config's mesh alone. `config.mesh` is list-typed, which ml-collections cannot
  override from the command line, so a strategy is chosen in the config arg: `--config FILE:stage=ar,strategy=tp,
  model_parallel=2` (presets in `mesh_presets`).
  """
  from kforcing_jax.training import mesh_presets
  if arg.strategy:
    config.update(mesh_presets.preset(arg.strategy, arg.model_parallel, arg.num_slices))
  elif arg.model_parallel != 1 or arg.num_slices != 1:
    raise ValueError("model_parallel / num_slices need a strategy=dp|fsdp|tp|fsdp_tp config arg")


STRATEGY_ARGS = dict(strategy="", model_parallel=1, num_slices=1)


def base_config() -> ml_collections.ConfigDict:
  """Every field the trainer reads, with the tiny CPU defaults (the module docstring explains them)."""
  from kforcing_jax.data import corpora
  c = ml_collections.ConfigDict()
  c.stage = "ar"
  c.k = 1
  c.targets = "self_forcing"
  # The distillation objective (distill/objectives.py); the defaults are the reference's recipe.
  c.loss = "ce"
  c.readout = "argmax"
  c.rollout = "teacher"
  c.target_teacher = "previous"
  c.ar_teacher_workdir = ""
  c.tau_range = [1.0, 1.0]
  c.slot_weighting = "uniform"
  c.teacher_workdir = ""
  c.init_workdir = ""
  c.seed = 0
  model = ModelConfig().to_dict()
  model.pop("k_max")
  c.model = ml_collections.ConfigDict(model)
  c.data = corpora.default_data_config()
  c.seq_len = 128
  c.batch_size = 16
  c.num_steps = 1000
  c.ema_decay = 0.0
  c.optim = ml_collections.ConfigDict(dict(lr=1e-3, warmup_steps=50, schedule="cosine", min_lr_ratio=0.1,
                                           b1=0.9, b2=0.99, eps=1e-8, weight_decay=0.0, grad_clip=1.0))
  c.log_every = 10
  c.eval_every = 100
  c.eval_batches = 4
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.mesh = [list(a) for a in sharding.DEFAULT_MESH]
  c.sharding_rules = [list(r) for r in sharding.DEFAULT_RULES]
  c.num_devices = -1
  c.progress_bar = config_dict.placeholder(bool)
  return c


# The distillation recipes that the config arg `recipe=` picks for a pflm stage (dotted keys: nested fields).
# "reference" is the PyTorch reference's setup; "kf" is this project's K-Forcing setup, whose values the project
# lead sets from the measurements in docs/results.md. An AR stage ignores the recipe.
RECIPES = {
    "reference": {"loss": "ce", "readout": "argmax", "rollout": "teacher", "target_teacher": "previous",
                  "tau_range": [1.0, 1.0], "model.hint_noise": "current", "model.noise_features": "sinusoid",
                  "model.feedback_layers": 0,
                  "optim.lr": 1e-4, "optim.schedule": "constant", "ema_decay": 0.999},
    "kf": {"loss": "kl", "readout": "sample", "rollout": "teacher", "target_teacher": "ar",
           "model.hint_noise": "previous", "model.feedback_layers": 2, "slot_weighting": "prefix", "optim.lr": 1e-3},
}


def apply_recipe(config: ml_collections.ConfigDict, name: str) -> None:
  """Sets the fields of RECIPES[name] on a pflm config ("" leaves the config's own values).

  Raises:
    ValueError: unknown recipe.
  """
  if not name or config.stage != "pflm":
    return
  if name not in RECIPES:
    raise ValueError(f"unknown recipe {name!r}; expected one of {', '.join(RECIPES)}")
  for key, value in RECIPES[name].items():
    *path, leaf = key.split(".")
    block = config
    for part in path:
      block = block[part]
    block[leaf] = value

