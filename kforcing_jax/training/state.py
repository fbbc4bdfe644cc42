"""Train state: sharded init (eval_shape -> shardings -> jit(init, out_shardings)), teacher loading and transfer.

The state is a `TrainState` (a flax struct dataclass, so a pytree): params, opt_state, step and rng (raw uint32
key data, so it checkpoints as an array). The frozen teacher is a separate params pytree sharded like the student
and never checkpointed with it.
"""
from typing import Any

import flax
import flax.linen as nn
from flax import struct
import jax
import jax.numpy as jnp
import ml_collections

from kforcing_jax import workdir as workdir_lib
from kforcing_jax.models import KForcingLM, ModelConfig
from kforcing_jax.training import sharding
from kforcing_jax.workdir import BadInputError


@struct.dataclass
class TrainState:
  """What one optimizer step reads and writes; `checkpoint_items` is what a checkpoint stores beside the params."""
  params: Any
  opt_state: Any
  step: Any
  rng: Any
  ema: Any = None   # exponential moving average of the params (config.ema_decay > 0), else None

  @property
  def served_params(self):
    """The params a checkpoint's "params" item holds, evaluated and served: the EMA when there is one."""
    return self.params if self.ema is None else self.ema

  def checkpoint_items(self) -> dict:
    """The "train_state" checkpoint item (the served params are their own item; with an EMA, the raw params
    travel here)."""
    items = {"opt_state": self.opt_state, "step": self.step, "rng": self.rng}
    if self.ema is not None:
      items["raw_params"] = self.params
    return items

  @classmethod
  def from_checkpoint(cls, params, train_state: dict) -> "TrainState":
    """The inverse of (`served_params`, `checkpoint_items`)."""
    items = dict(train_state)
    raw = items.pop("raw_params", None)
    return cls(params=params, **items) if raw is None else cls(params=raw, ema=params, **items)


def model_config(config: ml_collections.ConfigDict, k_max: int) -> ModelConfig:
  """The `ModelConfig` of `config.model` with the stage's k_max (0 for the AR stage)."""
  try:
    return ModelConfig.from_dict({**config.model.to_dict(), "k_max": int(k_max)})
  except (TypeError, ValueError) as e:
    raise BadInputError(f"bad model config: {e}") from e


def _dummy_tokens(mcfg: ModelConfig):
  return jnp.zeros((1, min(8, mcfg.max_len)), jnp.int32)


def init_state(mcfg: ModelConfig, tx, mesh, rules, seed: int):
  """A freshly initialised train state, created directly with its shardings (never on host).

  Args:
    mcfg: model config.
    tx: the optax transformation.
    mesh: device mesh.
    rules: logical->mesh rules.
    seed: init / noise seed.
  Returns:
    (state, state_shardings, abstract_state): `TrainState`s of arrays, shardings and ShapeDtypeStructs.
  """
  model = KForcingLM(mcfg)

  def init_fn():
    key = jax.random.key(seed)
    params = model.init(jax.random.fold_in(key, 1), _dummy_tokens(mcfg), method=model.init_all)["params"]
    # Boxed params go into tx.init so the optimizer moments inherit the params' logical axes.
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.fold_in(key, 2))}

  with sharding.activate(mesh, rules):
    abstract_boxed = jax.eval_shape(init_fn)
    shardings = sharding.shardings_for(abstract_boxed, mesh, rules)
    state = jax.jit(lambda: nn.unbox(init_fn()), out_shardings=shardings)()
  abstract = workdir_lib.to_abstract(nn.unbox(abstract_boxed), shardings)
  return TrainState(**state), TrainState(**shardings), TrainState(**abstract)


def load_teacher(teacher_workdir: str, teacher: ModelConfig, param_shardings):
  """Restores the frozen teacher's params, laid out like the student's matching tensors.

  Args:
    teacher_workdir: the teacher's workdir (already checked by `workdir.check_teacher`).
    teacher: its ModelConfig from `workdir.check_teacher`.
    param_shardings: the student's param shardings.
  Returns:
    The teacher's inner params dict.
  """
  model = KForcingLM(teacher)
  abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), _dummy_tokens(teacher),
                                                        method=model.init_all))["params"])
  tshard = {name: param_shardings[name] for name in abstract}
  _, out = workdir_lib.restore(teacher_workdir, abstract_params=workdir_lib.to_abstract(abstract, tshard),
                              items=("params",))
  return out["params"]


def transfer(student_params, teacher_params, shardings):
  """The student's init (docs/method.md §6): every teacher tensor copied, the rest (an AR teacher has no noise
  encoder) kept fresh. Copies, so donating the student never frees the teacher's buffers."""
  flat = flax.traverse_util.flatten_dict(student_params)
  flat.update({k: v for k, v in flax.traverse_util.flatten_dict(teacher_params).items() if k in flat})
  merged = flax.traverse_util.unflatten_dict(flat)
  return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings)(merged)
