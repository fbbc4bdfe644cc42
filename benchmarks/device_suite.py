"""The accelerator tables no CPU run can give: staircase attention fwd+bwd and decoding throughput, in one process.

Run through `benchmarks/device_suite.sh` (which installs the CUDA wheels first); this module is the part that
measures. Sections, each printed as a docs/benchmarks.md table and written to OUT/device_suite.md + .json:
1. The sort-free inverse CDF against the full-sort reference on this backend (integer sums are exact in any
   order, but the float softmax feeding the weights is the backend's own); any mismatch fails the run.
2. One staircase attention layer, forward + backward (all six input gradients), dense / split / pallas, float32
   and bfloat16: median ms, XLA's compiled temp / peak memory, max relative error against dense. A kernel that
   does not compile, or disagrees with dense, fails the run.
3. Decoding tokens/s (prefill excluded) for AR (`vocab_cdf`) and K = 1..4 in bfloat16, per batch, at paper size
   and at SmolLM2-135M's shape (`benchmark.smollm2_size_config`, random weights).

  python -m benchmarks.device_suite --out OUT           # full sizes (meant for one GPU)
  python -m benchmarks.device_suite --smoke --out OUT   # tiny sizes, any backend (pallas interpreted on CPU)
"""
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

flags.DEFINE_string("out", "device_suite_out", "directory for device_suite.md / device_suite.json")
flags.DEFINE_bool("smoke", False, "tiny sizes: proves the script end to end on any backend")
FLAGS = flags.FLAGS

FULL = dict(attn=dict(batch=8, seq_len=1024, k=4, heads=12, head_dim=64, block=128), attn_repeats=5,
            batch_sizes=(1, 8, 32, 128), ks=(1, 2, 3, 4), num_tokens=122, repeats=3, icdf_rows=4096)
SMOKE = dict(attn=dict(batch=1, seq_len=40, k=2, heads=2, head_dim=16, block=16), attn_repeats=1,
             batch_sizes=(1, 2), ks=(1, 2), num_tokens=8, repeats=1, icdf_rows=64)
TOLERANCE = {"float32": 2e-3, "bfloat16": 5e-2}  # max |err| / max |dense| over outputs and gradients


class SuiteError(RuntimeError):
  """A kernel did not compile or a check failed: the suite must stop, loudly."""


def icdf_check(rows: int, vocab: int) -> str:
  """Checks `inverse_cdf.sample` / `invert` against the full-sort reference on this backend; one summary line."""
  from kforcing_jax.distill import inverse_cdf

  ks = jax.random.split(jax.random.key(0), 4)
  scale = jnp.where(jnp.arange(rows) % 2 == 0, 1.0, 6.0)[:, None]  # flat and peaked rows
  logits = scale * jax.random.normal(ks[0], (rows, vocab))
  u = jax.random.uniform(ks[1], (rows,))
  got, want = jax.jit(inverse_cdf.sample)(logits, u), jax.jit(inverse_cdf.sample_full_sort)(logits, u)
  tok = jax.random.randint(ks[2], (rows,), 0, vocab)
  xi = jax.random.uniform(ks[3], (rows,))
  u_got, u_want = jax.jit(inverse_cdf.invert)(logits, tok, xi), jax.jit(inverse_cdf.invert_full_sort)(logits, tok, xi)
  bad = int(jnp.sum(got != want)), int(jnp.sum(u_got != u_want))
  if any(bad):
    raise SuiteError(f"inverse CDF differs from the full sort on {jax.default_backend()}: {bad[0]} sampled tokens, "
                     f"{bad[1]} inverted u of {rows} rows (V={vocab})")
  return f"inverse CDF: sample and invert equal the full-sort reference on {rows} rows, V={vocab}"


def attention_rows(shape: dict, dtype_name: str, repeats: int) -> list:
  """fwd+bwd of one staircase attention layer per impl: (impl, ms, temp MiB, peak MiB, err vs dense)."""
  from benchmarks import kernels

  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype_name]
  s = shape
  args = kernels.make_inputs(s["batch"], s["seq_len"], s["k"], s["heads"], s["head_dim"], dtype)
  rows, ref = [], None
  for impl in ("dense", "split", "pallas"):
    try:
      compiled = jax.jit(kernels.fwd_bwd(impl, s["block"], s["block"])).lower(*args).compile()
      out = jax.block_until_ready(compiled(*args))
    except Exception as e:  # noqa: BLE001 - any lowering/compile/runtime failure must stop the suite
      raise SuiteError(f"{impl} attention ({dtype_name}) failed to compile or run on "
                       f"{jax.default_backend()}: {type(e).__name__}: {e}") from e
    temp, peak = kernels.memory(compiled)
    secs = kernels.time_call(compiled, args, repeats)
    leaves = [np.asarray(x, np.float32) for x in jax.tree.leaves(out)]
    ref = leaves if ref is None else ref
    err = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-6)) for a, b in zip(leaves, ref))
    if not np.isfinite(err) or err > TOLERANCE[dtype_name]:
      raise SuiteError(f"{impl} attention ({dtype_name}) disagrees with dense: max rel err {err:.2e}")
    rows.append((impl, secs * 1e3, temp / 2**20, peak / 2**20, err))
  return rows


def attention_table(shape: dict, repeats: int) -> tuple:
  """Markdown table and JSON rows for both dtypes."""
  s = shape
  lines = [f"Staircase attention fwd+bwd, B={s['batch']} N={s['seq_len']} k={s['k']} H={s['heads']} "
           f"D={s['head_dim']}, tiles {s['block']}:", "",
           "| impl | dtype | fwd+bwd ms (median of %d) | temp MiB | peak MiB | max rel err vs dense |" % repeats,
           "|---|---|---:|---:|---:|---|"]
  data = []
  for dt in ("float32", "bfloat16"):
    for impl, ms, temp, peak, err in attention_rows(shape, dt, repeats):
      lines.append(f"| {impl} | {dt} | {ms:.2f} | {temp:.1f} | {peak:.1f} | {err:.1e} |")
      data.append(dict(impl=impl, dtype=dt, ms=ms, temp_mib=temp, peak_mib=peak, rel_err=err))
  return "\n".join(lines), data


def decoding_table(smoke: bool, batch_sizes, ks, num_tokens: int, repeats: int, shape: str = "paper") -> tuple:
  """AR and K = 1..max(ks) tokens/s in bfloat16 at paper size or SmolLM2-135M's shape (a tiny stand-in when
  smoke)."""
  from kforcing_jax.evaluation import benchmark

  size = {"paper": benchmark.paper_size_config, "smollm2": benchmark.smollm2_size_config}[shape]
  cfg = size(max(ks), "bfloat16")
  if smoke:
    cfg = cfg.replace(num_layers=2, d_model=64, num_heads=2, num_kv_heads=min(cfg.num_kv_heads, 1), mlp_dim=128,
                      vocab_size=512)
  report = benchmark.run(cfg, benchmark.random_params(cfg), batch_sizes, ks, ar_samplers=("vocab_cdf",),
                         num_tokens=num_tokens, repeats=repeats, progress=False)
  head = (f"Decoding, {shape} shape: {cfg.num_layers} x {cfg.d_model}, V={cfg.vocab_size}, bfloat16, 6-token prompts, "
          f"{num_tokens} new tokens, median of {repeats}; tokens/s (speed-up over ar_vocab_cdf):")
  return head + "\n\n" + benchmark.markdown_table(report), report


def run_suite(out: str, smoke: bool) -> str:
  """All sections; writes OUT/device_suite.md and OUT/device_suite.json and returns the markdown."""
  p = SMOKE if smoke else FULL
  dev = jax.devices()[0]
  t0 = time.perf_counter()
  parts = [f"**Machine: {jax.default_backend()} / {dev.device_kind}** ({jax.device_count()} device(s), "
           f"jax {jax.__version__}){' — SMOKE sizes, not a measurement' if smoke else ''}"]
  parts.append(icdf_check(p["icdf_rows"], 30522 if not smoke else 512))
  attn_md, attn = attention_table(p["attn"], p["attn_repeats"])
  parts.append(attn_md)
  dec = {}
  for shape in ("paper", "smollm2"):
    dec_md, dec[shape] = decoding_table(smoke, p["batch_sizes"], p["ks"], p["num_tokens"], p["repeats"], shape)
    parts.append(dec_md)
  parts.append(f"(suite wall time {time.perf_counter() - t0:.0f} s)")
  md = "\n\n".join(parts) + "\n"
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "device_suite.md"), "w") as f:
    f.write(md)
  with open(os.path.join(out, "device_suite.json"), "w") as f:
    json.dump({"device": dev.device_kind, "backend": jax.default_backend(), "smoke": smoke,
               "attention": attn, "decoding": dec}, f, indent=1)
  return md


def main(argv):
  del argv
  try:
    print(run_suite(FLAGS.out, FLAGS.smoke))
  except SuiteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
