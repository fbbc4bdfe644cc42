"""The train loop: AR teacher pretraining (stage "ar") and K-Forcing distillation (stage "pflm").

  python -m kforcing_jax.train --config experiments/configs/tiny_cpu.py:stage=ar --workdir /tmp/ar
  python -m kforcing_jax.train --config experiments/configs/tiny_cpu.py:stage=pflm,k=1 --workdir /tmp/k1 \
      --config.teacher_workdir=/tmp/ar

Stage "ar": next-token cross-entropy on packed / padded batches (loss_mask weights the targets).
Stage "pflm": a push-forward student with window `config.k` learns, in one staircase pass, the targets of a frozen
teacher (`config.teacher_workdir`), on data contexts with noises drawn fresh every step (distill/targets.py):
  targets="self_forcing"     AR teacher -> k=1 (inverse-CDF samples) or k-model -> 2k (two rollout steps);
  targets="noise_inversion"  AR teacher -> any k (data tokens, noises inverted through the teacher's CDF).
The student starts as a copy of the teacher (docs/method.md §6): every teacher tensor, plus a fresh noise encoder when
the teacher is AR. The teacher stays a separate frozen params tree; only its workdir path goes into the meta.

Where the run starts (resume order):
  1. a checkpoint already in WORKDIR: params, optimizer state, step, RNG and data-iterator state are restored and
     the run continues exactly (a checkpoint of a different stage / model / k in WORKDIR is refused, never
     overwritten); the newest unreadable step falls back to the previous one;
  2. an explicit init: the teacher (stage pflm) or `config.init_workdir` (params only, e.g. to continue an AR run
     on other data);
  3. scratch.
Checkpoints are written every `config.checkpoint_every` steps and at the end, only from finite states: a NaN / Inf
loss stops the run with its step number and leaves the last good checkpoint in place.
"""
import dataclasses
import functools
import time
from typing import Any, Optional

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from kforcing_jax import workdir as workdir_lib
from kforcing_jax.distill import losses
from kforcing_jax.distill import objectives
from kforcing_jax.models import KForcingLM, ModelConfig
from kforcing_jax.training import inputs, mesh_presets, optim, sharding
from kforcing_jax.training import state as state_lib
from kforcing_jax.training.metrics_writer import MetricsWriter
from kforcing_jax.workdir import BadInputError

STAGES = ("ar", "pflm")
TARGET_TEACHERS = ("previous", "ar")


class DivergedError(FloatingPointError):
  """The loss (or the parameters) became NaN / Inf."""


def validate_config(config: ml_collections.ConfigDict):
  """Checks the run-level fields (the model block is checked by `ModelConfig`). Raises BadInputError."""
  if config.stage not in STAGES:
    raise BadInputError(f"unknown stage {config.stage!r}; expected one of {STAGES}")
  if config.stage == "pflm":
    objective(config)  # enum fields and tau_range
    if config.target_teacher not in TARGET_TEACHERS:
      raise BadInputError(f"unknown target_teacher {config.target_teacher!r}; expected one of {TARGET_TEACHERS}")
    if int(config.k) < 1:
      raise BadInputError(f"k must be >= 1 for stage pflm, got {config.k}")
    if not config.teacher_workdir:
      raise BadInputError("stage pflm needs --config.teacher_workdir=DIR (a trained AR or push-forward workdir)")
  try:
    optim.validate(config.optim)
  except ValueError as e:
    raise BadInputError(str(e)) from e
  if not 0.0 <= float(config.ema_decay) < 1.0:
    raise BadInputError(f"ema_decay must be in [0, 1), got {config.ema_decay}")
  for name in ("num_steps", "batch_size", "seq_len", "checkpoint_every"):
    if int(config[name]) <= 0:
      raise BadInputError(f"{name} must be > 0, got {config[name]}")
  if int(config.seq_len) > int(config.model.max_len):
    raise BadInputError(f"seq_len={config.seq_len} exceeds model.max_len={config.model.max_len}")
  if config.stage == "pflm" and int(config.k) >= int(config.seq_len):
    raise BadInputError(f"k={config.k} leaves no window in sequences of {config.seq_len} tokens")


def _mesh(config):
  devices = jax.devices()
  if int(config.get("num_devices", -1)) > 0:
    devices = devices[: int(config.num_devices)]
  try:
    mesh = sharding.make_mesh(config.mesh, devices)
  except ValueError as e:
    raise BadInputError(str(e)) from e
  shards = int(np.prod([mesh.shape[a] for a in mesh_presets.batch_axes(config.sharding_rules)]))
  if int(config.batch_size) % shards:
    raise BadInputError(f"batch_size={config.batch_size} does not split over the {shards} batch shards of the mesh")
  return mesh


def objective(config, teacher_readout: str = "argmax", mask_index: int = -1) -> objectives.Objective:
  """The stage's distillation objective from the config (distill/objectives.py). Raises BadInputError."""
  try:
    return objectives.Objective(k=int(config.k), loss=config.loss, readout=config.readout, rollout=config.rollout,
                                targets=config.targets, teacher_readout=teacher_readout,
                                tau_range=tuple(float(t) for t in config.tau_range), mask_index=mask_index,
                                slot_weighting=config.slot_weighting)
  except (TypeError, ValueError) as e:
    raise BadInputError(str(e)) from e


def make_loss_fn(config, model, teacher_model, obj=None):
  """loss(params, teacher_params, batch, key, train) -> (loss, metrics) for the configured stage."""
  mask_index = model.cfg.mask_index
  use_dropout = model.cfg.dropout_rate > 0

  def loss_fn(params, teacher_params, batch, key, train):
    tok, loss_mask = batch["tokens"], batch["loss_mask"]
    k_targets, k_drop = jax.random.split(key)
    kw = dict(deterministic=not (train and use_dropout))
    if train and use_dropout:
      kw["rngs"] = {"dropout": k_drop}
    if config.stage == "ar":
      logits = model.apply({"params": params}, tok, **kw)
      return losses.next_token_cross_entropy(logits, tok, loss_mask, mask_index)
    return objectives.pflm_loss(obj or objective(config, mask_index=mask_index), model, params, teacher_model,
                                teacher_params, tok, loss_mask, k_targets, **kw)

  return loss_fn


def make_train_step(loss_fn, tx, schedule, ema_decay: float = 0.0):
  """One optimizer step on a `TrainState`; noises / dropout come from the state's key folded with the step; with
  ema_decay > 0 the state's EMA moves toward the new params."""

  def train_step(state, teacher_params, batch):
    key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    grad_fn = jax.value_and_grad(lambda p: loss_fn(p, teacher_params, batch, key, True), has_aux=True)
    (_, metrics), grads = grad_fn(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=schedule(state.step),
                   params_finite=jnp.isfinite(optax.tree.norm(params)).astype(jnp.float32))
    ema = state.ema
    if ema_decay > 0:
      ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema, params)
    return state.replace(params=params, opt_state=opt_state, step=state.step + 1, ema=ema), metrics

  return train_step


def _mean_metrics(metric_list):
  """Weighted mean of per-batch metrics (each batch's metrics are means over its "weight")."""
  total = sum(float(m["weight"]) for m in metric_list) or 1.0
  keys = [k for k in metric_list[0] if k != "weight"]
  return {k: sum(float(m[k]) * float(m["weight"]) for m in metric_list) / total for k in keys}


def _check_finite(step, metrics):
  if not (np.isfinite(float(metrics["loss"])) and float(metrics["params_finite"]) > 0):
    raise DivergedError(f"loss became {float(metrics['loss'])} (or the parameters non-finite) at step {step}; "
                        "stopped, the last good checkpoint is kept")


@dataclasses.dataclass
class Run:
  """Everything a stage decides before touching params: checked config, mesh, model, teachers, tokenizer."""
  config: ml_collections.ConfigDict
  workdir: str
  stage: str
  k: int
  mcfg: ModelConfig
  mesh: Any
  rules: tuple
  resuming: bool
  source: Optional[str]            # the teacher (pflm) or init workdir (ar) the params start from
  source_cfg: Optional[ModelConfig] = None
  target_dir: Optional[str] = None  # the teacher whose targets are learned (pflm)
  target_cfg: Optional[ModelConfig] = None
  obj: Optional[objectives.Objective] = None
  tokenizer: Any = None


def prepare(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Checks the config, the workdir, the teachers and the tokenizer (nothing is loaded or compiled).

  Raises:
    BadInputError: any of them does not fit.
  """
  validate_config(config)
  stage = config.stage
  k = int(config.k) if stage == "pflm" else 0
  mcfg = state_lib.model_config(config, k)
  mesh, rules = _mesh(config), sharding.rules_tuple(config.sharding_rules)
  resuming = workdir_lib.check_resume(workdir, stage, mcfg, k) is not None
  source = config.teacher_workdir if stage == "pflm" else (config.init_workdir or None)
  if source and not workdir_lib.has_checkpoints(source):
    raise BadInputError(f"{'teacher_workdir' if stage == 'pflm' else 'init_workdir'} {source} has no "
                        "checkpoints/ (train it first)")
  run = Run(config, workdir, stage, k, mcfg, mesh, rules, resuming, source)
  if stage == "pflm":
    run.source_cfg, tmeta = workdir_lib.check_teacher(source, mcfg, config.targets, config.target_teacher)
    run.target_dir, run.target_cfg, target_meta = source, run.source_cfg, tmeta
    if config.target_teacher == "ar" and run.source_cfg.k_max > 0:
      run.target_dir = workdir_lib.resolve_ar_teacher(config.ar_teacher_workdir or source)
      run.target_cfg, target_meta = workdir_lib.check_teacher(run.target_dir, mcfg, config.targets, "ar")
    run.obj = objective(config, target_meta.get("readout") or "argmax", mcfg.mask_index)
    try:
      objectives.check_teacher(run.obj, run.target_cfg.k_max, run.target_cfg.feedback_layers)
    except ValueError as e:
      raise BadInputError(f"target teacher {run.target_dir}: {e}") from e
  run.tokenizer = workdir_lib.tokenizer_for_run(config.data, workdir, source, resuming=resuming)
  workdir_lib.check_tokenizer_fits(run.tokenizer.spec, mcfg)
  return run


def init_train_state(run: Run, tx, train_iter):
  """The state the loop starts from: restored (resume), transferred from the teacher / init workdir, or fresh.

  Returns:
    (state, state shardings, first step, teacher params or None).
  """
  state, state_sh, abstract = state_lib.init_state(run.mcfg, tx, run.mesh, run.rules, int(run.config.seed))
  param_sh = state_sh.params
  use_ema = float(run.config.ema_decay) > 0
  if use_ema:
    state_sh, abstract = state_sh.replace(ema=param_sh), abstract.replace(ema=abstract.params)
  teacher_params = init_params = None
  if run.stage == "pflm":
    # The student starts from `source`; the targets come from `target_dir` (the same model unless
    # target_teacher=ar skips to the AR teacher at the root of the chain).
    init_params = state_lib.load_teacher(run.source, run.source_cfg, param_sh)
    teacher_params = (init_params if run.target_dir == run.source else
                      state_lib.load_teacher(run.target_dir, run.target_cfg, param_sh))
  if run.resuming:
    start, out = workdir_lib.restore(run.workdir, abstract_params=abstract.params,
                                     abstract_train_state=abstract.checkpoint_items(),
                                     data_state=grain.checkpoint.CheckpointRestore(train_iter),
                                     items=("params", "train_state", "data"), move_bad=True)
    state = state_lib.TrainState.from_checkpoint(out["params"], out["train_state"])
    num_steps = int(run.config.num_steps)
    workdir_lib.notice(f"resumed {run.workdir} at step {start}" if start < num_steps else
                       f"nothing to do: {run.workdir} is at step {start} >= num_steps={num_steps}")
    return state, state_sh, start, teacher_params
  if run.stage == "pflm":
    state = state.replace(params=state_lib.transfer(state.params, init_params, param_sh))
  elif run.source:
    _, out = workdir_lib.restore(run.source, abstract_params=abstract.params)
    state = state.replace(params=state_lib.transfer(state.params, out["params"], param_sh))
  if use_ema:
    state = state.replace(ema=jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=param_sh)(state.params))
  return state, state_sh, 0, teacher_params


def compile_steps(run: Run, tx, schedule, state_sh, teacher_params):
  """(train_step(state, teacher_params, batch), eval_step(params, teacher_params, batch, key)): jitted with explicit
  shardings, the state donated."""
  teacher_model = KForcingLM(run.target_cfg) if run.stage == "pflm" else None
  teacher_sh = None if teacher_params is None else {n: state_sh.params[n] for n in teacher_params}
  loss_fn = make_loss_fn(run.config, KForcingLM(run.mcfg), teacher_model, run.obj)
  batch_sh = {n: sharding.batch_sharding(run.mesh, run.rules, 2) for n in ("tokens", "loss_mask")}
  repl = sharding.replicated(run.mesh)
  train_step = jax.jit(make_train_step(loss_fn, tx, schedule, float(run.config.ema_decay)), in_shardings=(state_sh, teacher_sh, batch_sh),
                       out_shardings=(state_sh, repl), donate_argnums=(0,))
  eval_step = jax.jit(functools.partial(loss_fn, train=False),
                      in_shardings=(state_sh.params, teacher_sh, batch_sh, repl), out_shardings=(repl, repl))
  return train_step, eval_step


def make_evaluator(run: Run, eval_step, eval_ds, teacher_params):
  """evaluate(params) -> mean metrics over the config's fixed held-out batches (one noise key per batch)."""
  to_global = lambda b: inputs.to_global(b, run.mesh, run.rules, int(run.config.batch_size))
  eval_iter = iter(eval_ds)
  batches = [to_global(next(eval_iter)) for _ in range(int(run.config.eval_batches))]
  eval_key = jax.random.key_data(jax.random.key(int(run.config.seed) + 10_007))

  def evaluate(params):
    ms = []
    for i, b in enumerate(batches):
      key = jax.random.fold_in(jax.random.wrap_key_data(eval_key), i)
      ms.append(jax.device_get(eval_step(params, teacher_params, b, key)[1]))
    return _mean_metrics(ms)

  return evaluate


def checkpoint_meta(run: Run) -> dict:
  """The meta every saved step carries (what `load`, the trainer's resume and the next stage read)."""
  pflm = run.stage == "pflm"
  # Absolute, so that the next stage finds the chain's AR teacher from any working directory.
  teacher = workdir_lib.absolute(run.config.teacher_workdir) if pflm else ""
  ar_teacher = workdir_lib.absolute(run.target_dir) if pflm and run.target_cfg.k_max == 0 else ""
  return {"model": run.mcfg.to_dict(), "tokenizer": run.tokenizer.spec, "config": run.config.to_dict(),
          "stage": run.stage, "k": run.k, "teacher_workdir": teacher, "readout": run.config.readout if pflm else "",
          "ar_teacher_workdir": ar_teacher}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains one stage in `workdir` (resuming if it holds this run's checkpoint) and evaluates it.

  Args:
    config: the experiment config (experiments/configs/*.py).
    workdir: run directory: checkpoints/, tokenizer/, tensorboard/, metrics.jsonl.
  Returns:
    Final metrics: {"step", "train/<metric>", "eval/<metric>", "wall_s", "steps_per_s"}.
  Raises:
    BadInputError: invalid config, teacher or workdir (the CLI exits with status 2).
    DivergedError: the loss became NaN / Inf (the step is in the message).
  """
  t_start = time.time()
  run = prepare(config, workdir)
  train_ds, eval_ds = inputs.make_datasets(config, run.tokenizer)
  train_iter = iter(train_ds)
  tx, schedule = optim.make_optimizer(config.optim, int(config.num_steps))
  state, state_sh, start, teacher_params = init_train_state(run, tx, train_iter)
  train_step, eval_step = compile_steps(run, tx, schedule, state_sh, teacher_params)
  evaluate = make_evaluator(run, eval_step, eval_ds, teacher_params)
  final = train_loop(run, state, start, train_step, teacher_params, train_iter, evaluate)
  final["wall_s"] = time.time() - t_start
  final["steps_per_s"] = (final["step"] - start) / max(final["wall_s"], 1e-9)
  return final


def train_loop(run: Run, state, start: int, train_step, teacher_params, train_iter, evaluate) -> dict:
  """Steps start+1..num_steps: dispatch step s, then fetch step s-1's metrics (no host sync on the running step);
  checkpoints only from finite states, evals on schedule. Returns the final metrics."""
  config = run.config
  num_steps, log_every = int(config.num_steps), max(1, int(config.log_every))
  ckpt_every, eval_every = int(config.checkpoint_every), int(config.eval_every)
  tokens_per_step = int(config.batch_size) * int(config.seq_len)
  meta = checkpoint_meta(run)
  writer = MetricsWriter(run.workdir, num_steps, start, config.progress_bar)
  ckpt = workdir_lib.Writer(run.workdir, max_to_keep=int(config.keep_checkpoints))
  final, clock = {"step": start}, {"t": time.time(), "step": start}

  def flush(step, metrics, checksum):
    # Fetching blocks only on `step`, which ran while the next step was being dispatched.
    m = jax.device_get(metrics)
    _check_finite(step, m)
    writer.advance(step, float(m["loss"]))
    if step % log_every == 0 or step == num_steps:
      now = time.time()
      scalars = {n: float(v) for n, v in m.items() if n not in ("weight", "params_finite")}
      scalars["tokens_per_s"] = tokens_per_step * (step - clock["step"]) / max(now - clock["t"], 1e-9)
      clock.update(t=now, step=step)
      writer.write(step, scalars, "train", extra={"batch_checksum": checksum})
      final.update({f"train/{n}": v for n, v in scalars.items()})

  with sharding.activate(run.mesh, run.rules):
    if start == 0 and eval_every > 0:
      writer.write(0, evaluate(state.served_params), "eval")
    pending = None
    try:
      for step in range(start + 1, num_steps + 1):
        host_batch = next(train_iter)
        checksum = int(np.asarray(host_batch["tokens"], np.int64).sum())
        batch = inputs.to_global(host_batch, run.mesh, run.rules, int(config.batch_size))
        state, metrics = train_step(state, teacher_params, batch)
        if pending is not None:
          flush(*pending)
        pending = (step, metrics, checksum)
        do_ckpt = step % ckpt_every == 0 or step == num_steps
        do_eval = eval_every > 0 and (step % eval_every == 0 or step == num_steps)
        if do_ckpt or do_eval:
          flush(*pending)  # also the finiteness check: a checkpoint is never written from a NaN state
          pending = None
          if do_ckpt:
            ckpt.save(step, state.served_params, {**meta, "step": step}, train_state=state.checkpoint_items(),
                      data_state=grain.checkpoint.CheckpointSave(train_iter))
          if do_eval:
            ev = evaluate(state.served_params)
            writer.write(step, ev, "eval")
            final.update({f"eval/{n}": v for n, v in ev.items()})
        final["step"] = step
      if start >= num_steps and eval_every > 0:
        final.update({f"eval/{n}": v for n, v in evaluate(state.served_params).items()})
    finally:
      ckpt.close()
      writer.close()
  return final
