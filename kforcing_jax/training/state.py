"""Train state: sharded init (eval_shape -> shardings -> jit(init, out_shardings)), teacher loading and transfer.

The state is a dict {"params", "opt_state", "step", "rng"} (rng: raw uint32 key data, so it checkpoints as an
array). The frozen teacher is a separate params pytree sharded like the student and never checkpointed with it.
"""
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from kforcing_jax.models import KForcingLM, ModelConfig
from kforcing_jax.training import checkpoint, sharding

# Fields that change the parameters or the function computed; the rest (attention_impl, remat, dtype, tiles,
# dropout, max_len) are how it is computed and may differ between a teacher and its student.
ARCH_FIELDS = ("vocab_size", "num_layers", "d_model", "num_heads", "mlp_dim", "mask_index", "rope_base")


class BadInputError(ValueError):
  """A user error (config, teacher, workdir) that the CLI reports in one line with exit status 2."""


def model_config(config: ml_collections.ConfigDict, k_max: int) -> ModelConfig:
  """The `ModelConfig` of `config.model` with the stage's k_max (0 for the AR stage)."""
  try:
    return ModelConfig.from_dict({**config.model.to_dict(), "k_max": int(k_max)})
  except (TypeError, ValueError) as e:
    raise BadInputError(f"bad model config: {e}") from e


def arch_mismatch(a: dict, b: dict) -> list[str]:
  """Architecture fields on which two model-config dicts differ ("name: a != b")."""
  return [f"{f}: {a.get(f)} != {b.get(f)}" for f in ARCH_FIELDS if a.get(f) != b.get(f)]


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
    (state, state_shardings, abstract_state) - the last two describe the unboxed state.
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
  abstract = checkpoint.to_abstract(nn.unbox(abstract_boxed), shardings)
  return state, shardings, abstract


def check_teacher(teacher_workdir: str, student: ModelConfig, targets: str,
                  target_teacher: str = "previous") -> tuple[ModelConfig, dict]:
  """Checks (from its meta only) that a teacher fits the student; cheap, so it runs before anything else.

  Args:
    teacher_workdir: a workdir holding an AR or push-forward checkpoint.
    student: the student's model config (k_max = its k).
    targets: "self_forcing" or "noise_inversion".
    target_teacher: "previous" (the targets come from this teacher: k must double its k) or "ar" (it only
      initialises the student; the targets come from the AR teacher, so any k is allowed).
  Returns:
    (the teacher's ModelConfig with the student's computation settings, the teacher's meta).
  Raises:
    BadInputError: missing or empty workdir, architecture / vocab mismatch, k not a doubling of the teacher's.
  """
  if not teacher_workdir:
    raise BadInputError("stage pflm needs --config.teacher_workdir=DIR (a trained AR or push-forward workdir)")
  try:
    _, meta = checkpoint.read_meta(teacher_workdir)
  except checkpoint.CheckpointError as e:
    raise BadInputError(f"teacher_workdir: {e}") from e
  tmodel = meta.get("model", {})
  bad = arch_mismatch(tmodel, student.to_dict())
  if bad:
    raise BadInputError(f"teacher in {teacher_workdir} does not match the student config ({'; '.join(bad)})")
  tk = int(tmodel.get("k_max", 0))
  k = student.k_max
  if target_teacher == "ar":
    if tk > k:
      raise BadInputError(f"teacher in {teacher_workdir} has k={tk} > the student's k={k}")
    return student.replace(k_max=tk, hint_noise=tmodel.get("hint_noise", "current")), meta
  if targets == "noise_inversion" and tk != 0:
    raise BadInputError(f"noise_inversion needs an AR teacher; {teacher_workdir} is a k={tk} push-forward model")
  if targets == "self_forcing" and tk == 0 and k != 1:
    raise BadInputError(f"self-forcing from an AR teacher trains k=1, got k={k} (distill 1 -> 2 -> 4 in stages)")
  if targets == "self_forcing" and tk > 0 and k != 2 * tk:
    raise BadInputError(f"k={k} is not a doubling of the teacher's k={tk} (a k -> 2k stage needs k={2 * tk})")
  return student.replace(k_max=tk, hint_noise=tmodel.get("hint_noise", "current")), meta


def resolve_ar_teacher(workdir: str, max_hops: int = 8) -> str:
  """The AR teacher at the root of a distillation chain: `workdir` itself if it is AR, else the workdir its meta
  names (ar_teacher_workdir, then teacher_workdir), followed up to `max_hops` times. Raises BadInputError."""
  seen = []
  for _ in range(max_hops):
    try:
      _, meta = checkpoint.read_meta(workdir)
    except checkpoint.CheckpointError as e:
      raise BadInputError(f"resolving the AR teacher: {e}") from e
    if int(meta.get("model", {}).get("k_max", 0)) == 0:
      return workdir
    seen.append(workdir)
    workdir = meta.get("ar_teacher_workdir") or meta.get("teacher_workdir")
    if not workdir:
      break
  raise BadInputError(f"no AR teacher found along the chain {seen}; set --config.ar_teacher_workdir")


def load_teacher(teacher_workdir: str, teacher: ModelConfig, param_shardings):
  """Restores the frozen teacher's params, laid out like the student's matching tensors.

  Args:
    teacher_workdir: the teacher's workdir (already checked by `check_teacher`).
    teacher: its ModelConfig from `check_teacher`.
    param_shardings: the student's param shardings.
  Returns:
    The teacher's inner params dict.
  """
  model = KForcingLM(teacher)
  abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), _dummy_tokens(teacher),
                                                        method=model.init_all))["params"])
  tshard = {name: param_shardings[name] for name in abstract}
  _, out = checkpoint.restore(teacher_workdir, abstract_params=checkpoint.to_abstract(abstract, tshard),
                              items=("params",))
  return out["params"]


def transfer(student_params, teacher_params, shardings):
  """The student's init (method.md §6): every teacher tensor copied, the rest (an AR teacher has no noise
  encoder) kept fresh. Copies, so donating the student never frees the teacher's buffers."""
  flat = flax.traverse_util.flatten_dict(student_params)
  flat.update({k: v for k, v in flax.traverse_util.flatten_dict(teacher_params).items() if k in flat})
  merged = flax.traverse_util.unflatten_dict(flat)
  return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings)(merged)
