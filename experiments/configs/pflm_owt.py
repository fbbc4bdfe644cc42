r"""Paper-scale K-Forcing distillation on OWT (12 x 768 student initialised from its teacher), seq 1024, GPT-2 BPE + mask 50257 (V=50258); bring OpenWebText as text files: `--config.data.files='/data/owt/*.txt'`.

  python -m kforcing_jax.train --config experiments/configs/pflm_owt.py:k=1 --workdir gs://BUCKET/kf/owt_k1 \
      --config.teacher_workdir=gs://BUCKET/kf/owt_ar
  python -m kforcing_jax.train --config experiments/configs/pflm_owt.py:k=2 --workdir gs://BUCKET/kf/owt_k2 \
      --config.teacher_workdir=gs://BUCKET/kf/owt_k1
  python -m kforcing_jax.train --config experiments/configs/pflm_owt.py:k=4 --workdir gs://BUCKET/kf/owt_k4 \
      --config.teacher_workdir=gs://BUCKET/kf/owt_k2

Args: k=1|2|4, targets=self_forcing|noise_inversion. The paper's distillation recipe (steps, LR, batch, tau
distribution) is unreleased: 100k steps at LR 1e-4 (constant after 1000 warmup steps), batch 512 is a starting
point. Hardware: a TPU v4/v5 pod slice or 8 GPUs. Wall-clock: not measured.
"""
from kforcing_jax.training import config_lib


def get_config(arg=None):
  return config_lib.paper_config("owt", "stage=pflm" + ("," + arg if arg else ""))
