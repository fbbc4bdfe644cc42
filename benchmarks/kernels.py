"""Forward+backward time and compiled memory of one staircase attention layer: dense vs split vs pallas.

Default shape is the 12 x 768 model's attention at N=1024, k=4, batch 8 (W = N - k windows, each with k hints).
On CPU the Pallas kernels run in interpret mode: their timings mean nothing and only correctness is checked there,
and dense at full size would need ~10 GB of scores per intermediate, so on CPU the script (a) compiles every impl
at the full shape for `memory_analysis()` only and (b) times and checks at `--cpu_*` shapes.

  python -m benchmarks.kernels                      # auto: full shape on GPU/TPU, CPU mode on CPU
  python -m benchmarks.kernels --repeats=5 --impls=dense,split
"""
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from kforcing_jax.models import attention

flags.DEFINE_integer("batch", 8, "batch size")
flags.DEFINE_integer("seq_len", 1024, "training sequence length N (W = N - k windows)")
flags.DEFINE_integer("k", 4, "hints per window")
flags.DEFINE_integer("heads", 12, "attention heads")
flags.DEFINE_integer("head_dim", 64, "head dimension")
flags.DEFINE_integer("block_q", 128, "pallas query tile")
flags.DEFINE_integer("block_k", 128, "pallas key tile")
flags.DEFINE_string("dtype", "float32", "float32 | bfloat16")
flags.DEFINE_string("impls", "dense,split,pallas", "comma-separated attention impls")
flags.DEFINE_integer("repeats", 5, "timed repeats (median reported)")
flags.DEFINE_integer("cpu_batch", 2, "CPU mode: batch of the timed shape")
flags.DEFINE_integer("cpu_seq_len", 256, "CPU mode: N of the timed shape")
flags.DEFINE_integer("cpu_heads", 4, "CPU mode: heads of the timed shape")
flags.DEFINE_integer("cpu_block", 64, "CPU mode: pallas tiles of the timed shape")


def make_inputs(batch, seq_len, k, heads, head_dim, dtype, seed=0):
  """Random post-RoPE q/k/v of both streams for W = seq_len - k windows."""
  w = seq_len - k
  keys = jax.random.split(jax.random.key(seed), 6)
  ctx = [jax.random.normal(keys[i], (batch, w, heads, head_dim), dtype) for i in range(3)]
  hint = [jax.random.normal(keys[3 + i], (batch, w, k, heads, head_dim), dtype) for i in range(3)]
  return ctx + hint


def fwd_bwd(impl, block_q, block_k):
  """jit-able forward + backward (all six input gradients) of one attention layer under a fixed cotangent."""
  def loss(*args):
    oc, oh = attention.staircase_attention(*args, impl=impl, block_q=block_q, block_k=block_k)
    return jnp.sum(oc * oc) + jnp.sum(oh * oh)
  return jax.value_and_grad(loss, argnums=tuple(range(6)))


def score_counts(w, k, block_q, block_k):
  """Attention scores computed per (batch, head) in the forward: dense mask, split, and pallas tiles visited."""
  wp = -(-w // max(block_q, block_k)) * max(block_q, block_k)
  visited = lambda rows, slope: sum(((qi * block_q + block_q - 1) // slope // block_k + 1) * block_q * block_k
                                    for qi in range(rows // block_q))
  return {"dense": (w + w * k) ** 2, "split": w * w + w * w * k + w * k * k,
          "pallas": visited(wp, 1) + visited(wp * k, k) + (wp * k // block_q) * block_q * block_q}


def memory(compiled):
  """(temp bytes, peak estimate = args + outputs + temp - aliased) from XLA's compiled memory analysis."""
  m = compiled.memory_analysis()
  if m is None:
    return float("nan"), float("nan")
  peak = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  return m.temp_size_in_bytes, peak


def time_call(compiled, args, repeats):
  """Median wall time (s) over repeats after one warm-up call."""
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _shape_str(batch, seq_len, k, heads, head_dim):
  return f"B={batch} N={seq_len} k={k} H={heads} D={head_dim}"


def main(argv):
  del argv
  f = flags.FLAGS
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(f.dtype)
  impls = f.impls.split(",")
  if dtype is None or any(i not in ("dense", "split", "pallas") for i in impls) or f.k < 1 or f.seq_len <= f.k:
    print(f"error: bad --dtype={f.dtype!r} / --impls={f.impls!r} / --k / --seq_len", file=sys.stderr)
    sys.exit(2)
  on_cpu = jax.default_backend() == "cpu"
  full = (f.batch, f.seq_len, f.k, f.heads, f.head_dim)
  print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), dtype {f.dtype}")
  rows = []
  try:
    full_args = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in jax.eval_shape(lambda: make_inputs(*full, dtype))]
    for impl in impls:
      compiled = jax.jit(fwd_bwd(impl, f.block_q, f.block_k)).lower(*full_args).compile()
      temp, peak = memory(compiled)
      secs = float("nan")
      if not on_cpu:
        secs = time_call(compiled, make_inputs(*full, dtype), f.repeats)
      scores = score_counts(f.seq_len - f.k, f.k, f.block_q, f.block_k)[impl]
      rows.append((impl, _shape_str(*full), temp, peak, secs, f"{scores / 1e6:.2f}M fwd scores per head"))
    if on_cpu:
      print("CPU: pallas runs in interpret mode, so its timings are meaningless; correctness is checked instead.")
      small = (f.cpu_batch, f.cpu_seq_len, f.k, f.cpu_heads, f.head_dim)
      args = make_inputs(*small, dtype)
      ref = None
      for impl in impls:
        bq = bk = f.cpu_block
        compiled = jax.jit(fwd_bwd(impl, bq, bk)).lower(*args).compile()
        temp, peak = memory(compiled)
        out = compiled(*args)
        ref = out if ref is None else ref
        err = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-6))
                  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)))
        note = f"max rel err vs {impls[0]} {err:.1e}" + (" (interpret mode)" if impl == "pallas" else "")
        rows.append((impl, _shape_str(*small), temp, peak, time_call(compiled, args, f.repeats), note))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print("| impl | shape | temp MiB | peak MiB | fwd+bwd ms (median) | note |")
  print("|---|---|---:|---:|---:|---|")
  for impl, shape, temp, peak, secs, note in rows:
    ms = "compile only" if np.isnan(secs) else f"{secs * 1e3:.1f}"
    print(f"| {impl} | {shape} | {temp / 2**20:.1f} | {peak / 2**20:.1f} | {ms} | {note} |")


if __name__ == "__main__":
  app.run(main)
