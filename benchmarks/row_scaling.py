"""What one K-token decode step can gain: time of the 12 x 768 backbone's matmuls for M rows vs 2K * M rows.

A push-forward step with K tokens runs 2K query rows per sequence (K fed-back tokens + K hints), an AR step one.
So at batch B the best speed-up K=4 can reach over AR is 4 * t(B rows) / t(8B rows), whatever the decoder does
around the matmuls. This script measures t(M) for the decode step's weight matmuls (QKV, attention output, MLP;
12 layers, float32) in JAX and, when torch is installed, in PyTorch (the reference's backend), and prints that
bound per batch size.

  python -m benchmarks.row_scaling                      # batch 1, 8, 32 -> M = 1, 8, 32 and 8, 64, 256
  python -m benchmarks.row_scaling --batches 1,4 --k 2
"""
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

flags.DEFINE_list("batches", ["1", "8", "32"], "decode batch sizes")
flags.DEFINE_integer("k", 4, "tokens per push-forward step (2K rows per sequence)")
flags.DEFINE_integer("layers", 12, "layers")
flags.DEFINE_integer("d_model", 768, "model width")
flags.DEFINE_integer("mlp_dim", 3072, "MLP width")
flags.DEFINE_integer("repeats", 20, "timed repeats (median reported)")
FLAGS = flags.FLAGS


def _weights(rng, layers, d, f):
  shapes = [(d, 3 * d), (d, d), (d, f), (f, d)]
  return [[(rng.standard_normal(s) * 0.02).astype(np.float32) for s in shapes] for _ in range(layers)]


def _median_time(fn, repeats):
  fn()
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t0)
  return statistics.median(ts)


def time_jax(weights, rows, repeats):
  """Seconds for one pass of `rows` rows through every layer's weight matmuls (jitted)."""
  ws = jax.tree.map(jnp.asarray, weights)

  @jax.jit
  def run(x, ws):
    for w_qkv, w_o, w_1, w_2 in ws:
      x = x + jnp.sum((x @ w_qkv).reshape(x.shape[0], 3, -1), 1) @ w_o
      x = x + jax.nn.gelu(x @ w_1) @ w_2
    return x

  x = jnp.ones((rows, weights[0][0].shape[0]), jnp.float32)
  return _median_time(lambda: run(x, ws).block_until_ready(), repeats)


def time_torch(weights, rows, repeats):
  """The same in PyTorch (None when torch is not installed)."""
  try:
    import torch
  except ImportError:
    return None
  ws = [[torch.from_numpy(w) for w in layer] for layer in weights]
  x = torch.ones(rows, weights[0][0].shape[0])

  @torch.no_grad()
  def run():
    y = x
    for w_qkv, w_o, w_1, w_2 in ws:
      y = y + (y @ w_qkv).reshape(y.shape[0], 3, -1).sum(1) @ w_o
      y = y + torch.nn.functional.gelu(y @ w_1) @ w_2
    return y

  return _median_time(run, repeats)


def main(argv):
  del argv
  try:
    batches = [int(b) for b in FLAGS.batches]
  except ValueError:
    batches = []
  if not batches or min(batches) < 1 or FLAGS.k < 1:
    print(f"error: batches must be integers >= 1 and k >= 1, got {FLAGS.batches}, k={FLAGS.k}", file=sys.stderr)
    sys.exit(2)
  weights = _weights(np.random.default_rng(0), FLAGS.layers, FLAGS.d_model, FLAGS.mlp_dim)
  print(f"backend {jax.default_backend()}, {FLAGS.layers} x {FLAGS.d_model} (MLP {FLAGS.mlp_dim}), float32, "
        f"K={FLAGS.k}: one step = {2 * FLAGS.k} rows per sequence")
  print("| batch | rows AR / K-step | JAX ms AR / K-step | JAX bound on K speed-up | torch ms AR / K-step | "
        "torch bound |")
  print("|---|---|---|---|---|---|")
  for b in batches:
    m1, m2 = b, 2 * FLAGS.k * b
    j1, j2 = time_jax(weights, m1, FLAGS.repeats), time_jax(weights, m2, FLAGS.repeats)
    t1, t2 = time_torch(weights, m1, FLAGS.repeats), time_torch(weights, m2, FLAGS.repeats)
    torch_cells = (f"{1e3 * t1:.1f} / {1e3 * t2:.1f} | {FLAGS.k * t1 / t2:.2f}x" if t1 is not None else "– | –")
    print(f"| {b} | {m1} / {m2} | {1e3 * j1:.1f} / {1e3 * j2:.1f} | {FLAGS.k * j1 / j2:.2f}x | {torch_cells} |",
          flush=True)


if __name__ == "__main__":
  app.run(main)
