r"""The demo's scale: a 4 x 256 AR teacher on the King James Bible (BPE 4096) and its k = 1 -> 2 -> 4 students.

The config of `python -m kforcing_jax.demo` (kforcing_jax/main_job.py), shipped inside the package so that the demo
runs from an installed wheel; experiments/configs/tiny_cpu.py points the trainer CLI here:

  python -m kforcing_jax.train --config experiments/configs/tiny_cpu.py:stage=ar --workdir /tmp/kf/ar
  python -m kforcing_jax.train --config experiments/configs/tiny_cpu.py:stage=pflm,k=1 --workdir /tmp/kf/k1 \
      --config.teacher_workdir=/tmp/kf/ar
  python -m kforcing_jax.train --config experiments/configs/tiny_cpu.py:stage=pflm,k=2 --workdir /tmp/kf/k2 \
      --config.teacher_workdir=/tmp/kf/k1
  python -m kforcing_jax.train --config experiments/configs/tiny_cpu.py:stage=pflm,k=4 --workdir /tmp/kf/k4 \
      --config.teacher_workdir=/tmp/kf/k2

Args: stage=ar|pflm, k=1|2|4 (pflm), targets=self_forcing|noise_inversion, recipe=kf|reference (a pflm stage takes
`config_lib.RECIPES[recipe]`, default kf: dense KL to the AR teacher along its rollout, sampled readout; docs/results.md), runlocal (a smoke run),
strategy=dp|fsdp|tp|fsdp_tp with model_parallel=N, num_slices=N (mesh presets; default: the one-axis data mesh).
Hardware: 2 CPU cores, no accelerator. Expected wall-clock: 6-9 min for the AR stage and 2-3.5 min per pflm
stage, depending on the machine's day (both measured in docs/results.md).
"""
from kforcing_jax.training import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, stage="ar", k=1, targets="self_forcing", recipe="kf", runlocal=False,
                           **config_lib.STRATEGY_ARGS)
  c = config_lib.base_config()
  c.stage, c.k, c.targets = a.stage, a.k, a.targets
  config_lib.apply_strategy(c, a)
  c.model.update(vocab_size=4096, num_layers=4, d_model=256, num_heads=4, mlp_dim=1024, max_len=128)
  c.data.update(name="kjv", tokenizer="bpe", vocab_size=4096, packing="pack")
  c.seq_len = 128
  c.batch_size = 16
  if a.stage == "ar":
    c.num_steps = 450
    c.optim.update(lr=2e-3, warmup_steps=50)
  else:
    # Distillation: shorter, lower peak LR (the student starts from the teacher's weights).
    c.seq_len = 64
    c.num_steps = {1: 80, 2: 50, 4: 30}.get(a.k, 30)
    c.optim.update(lr=5e-4, warmup_steps=20)
    config_lib.apply_recipe(c, a.recipe)
    if a.recipe == "kf":
      c.optim.lr = 3e-3  # these 30-80-step stages learn more at 3x the recipe's peak (docs/results.md, ablation)
  c.log_every = 10
  c.eval_every = max(c.num_steps // (4 if a.stage == "ar" else 2), 1)
  c.eval_batches = 4
  c.checkpoint_every = c.num_steps // 2 if a.stage == "ar" else c.num_steps
  if a.runlocal:
    c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 20, 10, 10, 5
    c.optim.warmup_steps = 5
  return c
