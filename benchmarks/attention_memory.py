"""Peak memory and time of one push-forward train step (forward + backward): `dense` vs `split` attention.

  python benchmarks/attention_memory.py [--seq_len 1024] [--k 4] [--repeats 3] [--out docs/attention_memory.json]

Peak memory is XLA's compiled temp allocation for the step (`memory_analysis().temp_size_in_bytes`, the live
buffers beyond inputs/outputs), which is deterministic; time is the median wall time of jitted calls after a
warm-up. Prints a markdown table (pasted into docs/benchmarks.md).
"""
import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from kforcing_jax.models import KForcingLM, ModelConfig, init_params


def step_fn(model):
  def loss_fn(params, ctx_BxW, noise_BxWxK, tgt_BxWxK):
    logits = model.apply({"params": params}, ctx_BxW, noise_BxWxK, jnp.ones((ctx_BxW.shape[0],)),
                         method=model.staircase)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, tgt_BxWxK))
  return jax.jit(jax.value_and_grad(loss_fn))


def measure(impl, args, repeats):
  cfg = ModelConfig(vocab_size=args.vocab, num_layers=args.layers, d_model=args.d_model, num_heads=args.heads,
                    mlp_dim=4 * args.d_model, max_len=args.seq_len, k_max=args.k, attention_impl=impl)
  model = KForcingLM(cfg)
  params = init_params(cfg, jax.random.key(0))
  w = args.seq_len - args.k
  rng = np.random.default_rng(0)
  ctx = jnp.asarray(rng.integers(0, args.vocab, (args.batch, w)), jnp.int32)
  noise = jnp.asarray(rng.uniform(size=(args.batch, w, args.k)), jnp.float32)
  tgt = jnp.asarray(rng.integers(0, args.vocab, (args.batch, w, args.k)), jnp.int32)
  fn = step_fn(model)
  t0 = time.perf_counter()
  compiled = fn.lower(params, ctx, noise, tgt).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  jax.block_until_ready(compiled(params, ctx, noise, tgt))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(params, ctx, noise, tgt))
    times.append(time.perf_counter() - t0)
  return {"impl": impl, "temp_bytes": int(mem.temp_size_in_bytes), "step_s": float(np.median(times)),
          "compile_s": compile_s}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--seq_len", type=int, default=1024)
  ap.add_argument("--k", type=int, default=4)
  ap.add_argument("--batch", type=int, default=1)
  ap.add_argument("--layers", type=int, default=2)
  ap.add_argument("--d_model", type=int, default=128)
  ap.add_argument("--heads", type=int, default=4)
  ap.add_argument("--vocab", type=int, default=512)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  rows = [measure(impl, args, args.repeats) for impl in ("dense", "split")]
  dense, split = rows
  machine = f"{platform.processor() or platform.machine()}, {jax.device_count()}x {jax.devices()[0].device_kind}"
  print(f"one train step (fwd+bwd), N={args.seq_len}, k={args.k}, batch {args.batch}, {args.layers}x{args.d_model}, "
        f"{args.heads} heads, vocab {args.vocab}; backend {jax.default_backend()} ({machine})\n")
  print("| attention | peak temp memory (MiB) | step time (s, median) | compile (s) |")
  print("|---|---|---|---|")
  for r in rows:
    print(f"| {r['impl']} | {r['temp_bytes'] / 2**20:.1f} | {r['step_s']:.3f} | {r['compile_s']:.1f} |")
  print(f"\nsplit / dense: memory {split['temp_bytes'] / dense['temp_bytes']:.1%}, "
        f"time {split['step_s'] / dense['step_s']:.2f}x")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"args": vars(args), "backend": jax.default_backend(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
