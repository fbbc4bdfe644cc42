r"""Paper-scale AR teacher on OWT: 12 layers x 768, 12 heads, seq 1024, GPT-2 BPE + mask 50257 (V=50258).

  python -m kforcing_jax.train --config experiments/configs/ar_owt.py --workdir gs://BUCKET/kf/owt_ar \
      --config.data.files='/data/owt/*.txt'

Bring OpenWebText as text files (`data.files`).
Recipe (below): MDLM's defaults - AdamW 3e-4, betas (0.9, 0.999), eps 1e-8, no weight decay, 2500 warmup steps then
constant, global batch 512, clip 1.0, dropout 0.1, bf16 compute, remat, 1M steps (docs/method.md).
Args: strategy=dp|fsdp|tp|fsdp_tp, model_parallel=N, num_slices=N (mesh presets; default: the one-axis data mesh).
Hardware: a TPU v4/v5 pod slice or 8 GPUs. Expected wall-clock: not measured yet.
"""
from kforcing_jax.training import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, **config_lib.STRATEGY_ARGS)
  c = config_lib.base_config()
  c.stage = "ar"
  config_lib.apply_strategy(c, a)
  c.model.update(num_layers=12, d_model=768, num_heads=12, mlp_dim=3072, dtype="bfloat16", vocab_size=50258,
                 mask_index=50257, max_len=1024, remat=True, dropout_rate=0.1)
  c.data.update(name="local_text", tokenizer="gpt2", vocab_multiple=1, packing="pack", documents="file")
  c.seq_len, c.batch_size, c.num_steps = 1024, 512, 1_000_000
  c.optim.update(lr=3e-4, warmup_steps=2500, schedule="constant", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                 grad_clip=1.0)
  c.log_every, c.eval_every, c.eval_batches = 100, 5000, 16
  c.checkpoint_every, c.keep_checkpoints = 5000, 3
  return c
