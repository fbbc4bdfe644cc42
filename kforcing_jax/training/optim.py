"""The optimizer from config: optax AdamW, linear warmup then cosine decay, global-norm clipping.

  config.optim.lr             peak learning rate
  config.optim.warmup_steps   linear warmup from 0
  config.optim.schedule       "cosine" (to lr * min_lr_ratio at num_steps) | "constant" (after warmup; MDLM's recipe)
  config.optim.min_lr_ratio   floor of the cosine, as a fraction of lr
  config.optim.b1, b2, eps, weight_decay, grad_clip (<= 0: no clipping)
"""
import math

import optax

SCHEDULES = ("cosine", "constant")


def validate(optim_cfg) -> None:
  """Checks the optim block before anything runs (a NaN or negative lr trains without an error otherwise).

  Raises:
    ValueError: naming the field, e.g. "optim.lr must be a finite number > 0, got nan".
  """
  def number(name, ok, want):
    v = optim_cfg[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
      raise ValueError(f"optim.{name} must be {want}, got {v!r}")

  number("lr", lambda v: v > 0, "a finite number > 0")
  number("warmup_steps", lambda v: v >= 0 and v == int(v), "an integer >= 0")
  number("min_lr_ratio", lambda v: 0 <= v <= 1, "in [0, 1]")
  number("b1", lambda v: 0 <= v < 1, "in [0, 1)")
  number("b2", lambda v: 0 <= v < 1, "in [0, 1)")
  number("eps", lambda v: v > 0, "a finite number > 0")
  number("weight_decay", lambda v: v >= 0, "a finite number >= 0")
  number("grad_clip", lambda v: True, "a finite number (<= 0: no clipping)")
  if optim_cfg.schedule not in SCHEDULES:
    raise ValueError(f"unknown optim.schedule {optim_cfg.schedule!r}; expected one of {', '.join(SCHEDULES)}")


def make_schedule(optim_cfg, num_steps: int) -> optax.Schedule:
  """Learning rate as a function of the step.

  Args:
    optim_cfg: the `config.optim` block.
    num_steps: total training steps (the cosine reaches its floor there).
  Returns:
    An optax schedule.
  """
  lr, warmup = float(optim_cfg.lr), int(optim_cfg.warmup_steps)
  if optim_cfg.schedule == "constant":
    return optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)],
                                [max(warmup, 1)])
  if optim_cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 1), max(num_steps, warmup + 1),
                                              end_value=lr * float(optim_cfg.min_lr_ratio))
  raise ValueError(f"unknown optim.schedule {optim_cfg.schedule!r}; expected 'cosine' or 'constant'")


def make_optimizer(optim_cfg, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW with clipping and the schedule above.

  Args:
    optim_cfg: the `config.optim` block.
    num_steps: total training steps.
  Returns:
    (the gradient transformation, the schedule, for logging the learning rate).
  """
  schedule = make_schedule(optim_cfg, num_steps)
  adamw = optax.adamw(schedule, b1=float(optim_cfg.b1), b2=float(optim_cfg.b2), eps=float(optim_cfg.eps),
                      weight_decay=float(optim_cfg.weight_decay))
  if float(optim_cfg.grad_clip) > 0:
    return optax.chain(optax.clip_by_global_norm(float(optim_cfg.grad_clip)), adamw), schedule
  return adamw, schedule
