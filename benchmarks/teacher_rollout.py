"""The AR teacher's K-slot rollout for the distillation targets: K staircase passes vs the cached rollout.

`distill.targets.ar_rollout` computes, for every window of a batch, the teacher's inverse-CDF rollout under the slot
noises and the conditional behind each slot. It runs one AR pass over the contexts and then one new row per window
and slot (`KForcingLM.context_states` / `window_step`). The staircase alternative re-runs the contexts and every
earlier slot for each slot (`targets.ar_along` per slot, K passes of W (1 + i) rows). This times both, jitted, in
alternation on one random batch, and reports how often they pick the same tokens.

  python -m benchmarks.teacher_rollout --teacher_workdir demo_out/ar --k 4
"""
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from kforcing_jax import cli

flags.DEFINE_string("teacher_workdir", "demo_out/ar", "the AR teacher")
flags.DEFINE_integer("k", 4, "slots")
flags.DEFINE_integer("batch", 16, "rows")
flags.DEFINE_integer("windows", 60, "windows per row (the demo's pflm stages: seq_len 64 - k)")
flags.DEFINE_integer("repeats", 5, "timed repeats of each (median reported)")
FLAGS = flags.FLAGS


def staircase_rollout(model, params, ctx_BxW, noise_BxWxK, tau_B):
  """The rollout as K staircase passes (`targets.ar_along` along the tokens fixed so far)."""
  from kforcing_jax.distill import inverse_cdf, targets

  y = jnp.zeros(noise_BxWxK.shape[:2] + (0,), jnp.int32)
  logps = []
  for i in range(noise_BxWxK.shape[-1]):
    logps.append(targets.ar_along(model, params, ctx_BxW, y, tau_B)[:, :, i])
    y = jnp.concatenate([y, inverse_cdf.sample(logps[-1], noise_BxWxK[..., i])[..., None]], -1)
  return y, jnp.stack(logps, 2)


def main(argv):
  del argv
  from kforcing_jax import api
  from kforcing_jax.distill import targets
  from kforcing_jax.models.transformer import KForcingLM

  if min(FLAGS.k, FLAGS.batch, FLAGS.windows, FLAGS.repeats) < 1:
    raise ValueError("--k, --batch, --windows and --repeats must be >= 1")
  teacher = api.load(FLAGS.teacher_workdir)
  model, params = KForcingLM(teacher.config), teacher.params
  b, w, k = FLAGS.batch, FLAGS.windows, FLAGS.k
  ctx = jax.random.randint(jax.random.key(0), (b, w), 0, teacher.config.vocab_size)
  u = jax.random.uniform(jax.random.key(1), (b, w, k))
  tau = jnp.ones((b,))
  fns = {"staircase (K passes)": jax.jit(lambda p, c, x: staircase_rollout(model, p, c, x, tau)),
         "cached (ar_rollout)": jax.jit(lambda p, c, x: targets.ar_rollout(model, p, c, x, tau))}
  outs = {n: jax.block_until_ready(f(params, ctx, u)) for n, f in fns.items()}
  times = {n: [] for n in fns}
  for _ in range(FLAGS.repeats):
    for n, f in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(f(params, ctx, u))
      times[n].append(time.perf_counter() - t0)
  (ya, la), (yb, lb) = (tuple(np.asarray(a) for a in o) for o in outs.values())
  same = np.all(ya == yb, -1)
  print(f"backend {jax.default_backend()}, teacher {FLAGS.teacher_workdir}, B={b}, W={w}, K={k}, median of "
        f"{FLAGS.repeats} (alternated)")
  print("| rollout | s |\n|---|---|")
  for n, t in times.items():
    print(f"| {n} | {statistics.median(t):.3f} |")
  print(f"\nwindows with identical tokens: {same.mean():.4f}; max |log-prob difference| on them: "
        f"{np.max(np.abs(la[same] - lb[same])):.1e}")


if __name__ == "__main__":
  cli.run(main)  # quiet logging; bad input -> one error line, exit 2
