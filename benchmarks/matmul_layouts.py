"""Can a weight layout or dtype make the K=4 decode step's skinny matmuls cheaper on XLA:CPU?

The K=4 step runs 8 rows per sequence through every weight matrix where AR runs 1 (benchmarks/row_scaling.py);
its speed-up over AR at batch B is capped by 4 x t(B rows) / t(8B rows). This times the 12 x 768 backbone's weight
matmuls (QKV, attention output, MLP 3072) per row count in four forms and prints one table:
  x @ W        the model's layout ([in, out] kernels)
  NT           kernels stored transposed ([out, in]), contracted on their last axis
  (W^T x^T)^T  the weight as the left operand
  bf16 W       bfloat16 kernels, float32 accumulation

  python -m benchmarks.matmul_layouts --rows 1,8,32,256
"""
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from kforcing_jax import cli

flags.DEFINE_list("rows", ["1", "8", "32", "256"], "row counts (B for AR, 8B for a K=4 step)")
flags.DEFINE_integer("repeats", 15, "timed repeats (median reported)")
FLAGS = flags.FLAGS
D, F, LAYERS = 768, 3072, 12

FORMS = {
    "x @ W": (lambda x, w: x @ w, lambda w: w),
    "NT": (lambda x, wt: jax.lax.dot_general(x, wt, (((1,), (1,)), ((), ()))), lambda w: w.T.copy()),
    "(W^T x^T)^T": (lambda x, w: jax.lax.dot_general(w, x, (((0,), (1,)), ((), ()))).T, lambda w: w),
    "bf16 W": (lambda x, w: jnp.dot(x.astype(jnp.bfloat16), w, preferred_element_type=jnp.float32),
               lambda w: w.astype(jnp.bfloat16)),
}


def _backbone(mm):
  def run(x, ws):
    for w_qkv, w_o, w_1, w_2 in ws:
      x = x + mm(jnp.sum(mm(x, w_qkv).reshape(x.shape[0], 3, -1), 1), w_o)
      x = x + mm(jax.nn.gelu(mm(x, w_1)), w_2)
    return x
  return jax.jit(run)


def _ms(fn, x, ws, repeats):
  jax.block_until_ready(fn(x, ws))
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(x, ws))
    ts.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(ts)


def main(argv):
  del argv
  rows = cli.int_list(FLAGS.rows, "rows")
  rng = np.random.default_rng(0)
  shapes = [(D, 3 * D), (D, D), (D, F), (F, D)]
  weights = [[jnp.asarray((rng.standard_normal(s) * 0.02).astype(np.float32)) for s in shapes]
             for _ in range(LAYERS)]
  forms = {name: (_backbone(mm), jax.tree.map(prep, weights)) for name, (mm, prep) in FORMS.items()}
  print(f"backend {jax.default_backend()}, {LAYERS} x {D} (MLP {F}) weight matmuls, ms (median of {FLAGS.repeats})")
  print("| rows | " + " | ".join(FORMS) + " |\n|---|" + "---|" * len(FORMS))
  for m in rows:
    x = jnp.ones((m, D), jnp.float32)
    print(f"| {m} | " + " | ".join(f"{_ms(fn, x, ws, FLAGS.repeats):.1f}" for fn, ws in forms.values()) + " |",
          flush=True)


if __name__ == "__main__":
  cli.run(main)
