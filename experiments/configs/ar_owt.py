r"""Paper-scale AR teacher on OWT: 12 layers x 768, 12 heads, seq 1024, GPT-2 BPE + mask 50257 (V=50258); bring OpenWebText as text files: `--config.data.files='/data/owt/*.txt'`.

  python -m kforcing_jax.train --config experiments/configs/ar_owt.py --workdir gs://BUCKET/kf/owt_ar

Recipe: MDLM's defaults (AdamW 3e-4, 2500 warmup steps then constant, global batch 512, clip 1.0, dropout 0.1,
bf16 compute, 1M steps; method.md §7). Hardware: a TPU v4/v5 pod slice or 8 GPUs (data parallel by default; config
arg `strategy=fsdp|tp|fsdp_tp,model_parallel=N,num_slices=N` picks a mesh preset). Wall-clock: not measured.
"""
from kforcing_jax.training import config_lib


def get_config(arg=None):
  return config_lib.paper_config("owt", "stage=ar" + ("," + arg if arg else ""))
