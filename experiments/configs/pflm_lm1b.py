r"""Paper-scale K-Forcing distillation on LM1B: a 12 x 768 student initialised from its teacher, seq 128, BERT vocab.

  python -m kforcing_jax.train --config experiments/configs/pflm_lm1b.py:k=1 --workdir gs://BUCKET/kf/lm1b_k1 \
      --config.teacher_workdir=gs://BUCKET/kf/lm1b_ar
  python -m kforcing_jax.train --config experiments/configs/pflm_lm1b.py:k=2 --workdir gs://BUCKET/kf/lm1b_k2 \
      --config.teacher_workdir=gs://BUCKET/kf/lm1b_k1
  python -m kforcing_jax.train --config experiments/configs/pflm_lm1b.py:k=4 --workdir gs://BUCKET/kf/lm1b_k4 \
      --config.teacher_workdir=gs://BUCKET/kf/lm1b_k2

The data block matches ar_lm1b.py (`--config.data.vocab_file=PATH/vocab.txt`). Args: k=1|2|4,
targets=self_forcing|noise_inversion, recipe=reference|kf (`config_lib.RECIPES`; default reference),
strategy=dp|fsdp|tp|fsdp_tp, model_parallel=N, num_slices=N.
Recipe: the paper's distillation schedule is unreleased; 100k steps, 1000 warmup steps, batch 512, AdamW
(0.9, 0.999) with the recipe's lr and objective. Hardware: a TPU v4/v5 pod slice or 8 GPUs. Expected wall-clock:
not measured yet.
"""
from kforcing_jax.training import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, k=1, targets="self_forcing", recipe="reference", **config_lib.STRATEGY_ARGS)
  c = config_lib.base_config()
  c.stage, c.k, c.targets = "pflm", a.k, a.targets
  config_lib.apply_strategy(c, a)
  c.model.update(num_layers=12, d_model=768, num_heads=12, mlp_dim=3072, dtype="bfloat16", vocab_size=30522,
                 mask_index=103, max_len=128)
  c.data.update(name="lm1b", tokenizer="bert", vocab_multiple=1, packing="pad")
  c.seq_len, c.batch_size, c.num_steps = 128, 512, 100_000
  c.optim.update(warmup_steps=1000, schedule="constant", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                 grad_clip=1.0)
  config_lib.apply_recipe(c, a.recipe)
  c.log_every, c.eval_every, c.eval_batches = 100, 5000, 16
  c.checkpoint_every, c.keep_checkpoints = 5000, 3
  return c
