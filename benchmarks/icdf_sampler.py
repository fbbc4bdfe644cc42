"""The sorted inverse CDF (`ar_icdf`) against the vocabulary-order sampler (`ar_vocab_cdf`), side by side in one run.

For each model: AR decoding tokens/s with either sampler (the step loop of `decoding.ar.phases`, prefill excluded; both
compiled first, then timed in alternation so that load drift on a shared machine hits both alike),
and the sampler alone on the model's own next-token logits after the prompts (ms per call for [B, V]): the
vocabulary-order sampler, `inverse_cdf.sample` and the full-sort reference `inverse_cdf.sample_full_sort`, plus
the mean largest probability (how peaked the rows are). Models: the demo architecture (4 x 256, V=4096) and the
paper size (12 x 768, V=30522), both with random weights (`benchmark.random_params`: nearly flat next-token
distributions), and optionally a trained AR model (`--workdir`).

  python -m benchmarks.icdf_sampler                          # demo + paper size, B = 1, 8, 32
  python -m benchmarks.icdf_sampler --workdir RUN/ar --models demo
"""
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from kforcing_jax import cli

flags.DEFINE_list("models", ["demo", "paper"], "random-weight models to run: demo, paper")
flags.DEFINE_string("workdir", None, "also a trained AR model (run directory)")
flags.DEFINE_list("batch_sizes", ["1", "8", "32"], "batch sizes")
flags.DEFINE_integer("num_tokens", 122, "new tokens per row")
flags.DEFINE_integer("repeats", 3, "timed repeats (median)")
FLAGS = flags.FLAGS


def _models(names, workdir):
  from kforcing_jax.evaluation import benchmark

  out = []
  for n in names:
    cfg = benchmark.paper_size_config(0)
    if n == "demo":
      cfg = cfg.replace(num_layers=4, d_model=256, num_heads=4, mlp_dim=1024, vocab_size=4096)
    elif n != "paper":
      raise ValueError(f"unknown model {n!r}; expected demo or paper")
    out.append((f"{n} size, random weights", cfg, benchmark.random_params(cfg)))
  if workdir:
    import kforcing_jax

    m = kforcing_jax.load(workdir)
    out.append((f"trained AR {workdir}", m.config, m.params))
  return out


def decode_pair(cfg, params, batch, num_tokens, repeats):
  """AR loop tokens/s with vocab_cdf and icdf, compiled first, then timed alternately (machine drift hits both)."""
  from kforcing_jax.decoding import ar, common
  from kforcing_jax.evaluation import benchmark

  tok, lens = benchmark._prompts(batch, 6, cfg.vocab_size)
  u = common.position_noise(0, batch, ar.noise_length(tok.shape[1], num_tokens))
  runs = {}
  for s in ("vocab_cdf", "icdf"):
    pre, run = ar.phases(cfg, num_tokens, s)
    pre_c = pre.lower(params, tok, lens, u, 1.0).compile()
    state = jax.block_until_ready(pre_c(params, tok, lens, u, 1.0))
    run_c = run.lower(params, *state, u, 1.0).compile()
    jax.block_until_ready(run_c(params, *state, u, 1.0))  # untimed warm-up
    runs[s] = (run_c, state)
  times = {s: [] for s in runs}
  for _ in range(repeats):
    for s, (run_c, state) in runs.items():
      t0 = time.perf_counter()
      jax.block_until_ready(run_c(params, *state, u, 1.0))
      times[s].append(time.perf_counter() - t0)
  return {s: batch * num_tokens / statistics.median(t) for s, t in times.items()}


def _ms(fn, args, repeats=20):
  c = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(c(*args))
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(c(*args))
    ts.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(ts)


def sampler_row(cfg, params, batch):
  """Sampler-only ms on the model's next-token logits after random prompts, and the mean largest probability."""
  from kforcing_jax.decoding import ar
  from kforcing_jax.distill import inverse_cdf
  from kforcing_jax.models.transformer import KForcingLM

  rng = np.random.default_rng(0)
  tok = jnp.asarray(rng.integers(1, cfg.vocab_size, size=(batch, 6)), jnp.int32)
  logits = KForcingLM(cfg).apply({"params": params}, tok)[:, -1].astype(jnp.float32)
  u = jax.random.uniform(jax.random.key(1), (batch,))
  p_max = float(jnp.mean(jnp.max(jax.nn.softmax(logits), -1)))
  return {"vocab_cdf_ms": _ms(lambda l, u: ar.sample_token(l, u, 1.0, "vocab_cdf"), (logits, u)),
          "icdf_ms": _ms(inverse_cdf.sample, (logits, u)),
          "full_sort_ms": _ms(inverse_cdf.sample_full_sort, (logits, u)), "p_max": p_max}


def convention_drift(rows: int = 16, vocab: int = 2000, draws: int = 4096) -> dict:
  """How often a uniform u maps to another token than under the float64 sorted CDF, per kind of logits row, and
  how many of those are near-tie swaps (logits within 2**-19 nats, which the integer convention orders by id)."""
  from kforcing_jax.distill import inverse_cdf

  rng = np.random.default_rng(0)
  x = rng.normal(size=(rows, vocab)).astype(np.float32)
  kinds = {"flat": x * 0.3, "peaked": x * 6.0, "ties": np.round(x * 1.5).astype(np.float32)}
  out = {}
  for name, logits in kinds.items():
    u = rng.uniform(size=(rows, draws)).astype(np.float32)
    got = np.asarray(jax.jit(inverse_cdf.sample)(jnp.broadcast_to(jnp.asarray(logits)[:, None], (rows, draws, vocab)),
                                                 jnp.asarray(u)))
    p = np.asarray(jax.nn.softmax(jnp.asarray(logits)), np.float64)
    order = np.argsort(-p, axis=-1, kind="stable")
    cdf = np.cumsum(np.take_along_axis(p, order, -1), -1)
    rank = np.minimum(np.stack([np.searchsorted(cdf[r], u[r], side="right") for r in range(rows)]), vocab - 1)
    r, c = np.nonzero(got != np.take_along_axis(order, rank, -1))
    gap = np.abs(logits[r, got[r, c]] - logits[r, np.take_along_axis(order, rank, -1)[r, c]])
    out[name] = {"rate": len(r) / got.size, "differ": len(r), "near_ties": int(np.sum(gap < 2.0 ** -19))}
  return out


def main(argv):
  del argv
  batches = [int(b) for b in FLAGS.batch_sizes]
  bad = [n for n in FLAGS.models if n not in ("demo", "paper")]
  if bad or any(x < 1 for x in batches):
    raise ValueError(f"--models takes demo, paper (got {FLAGS.models}); --batch_sizes positive (got {batches})")
  print("Against the float64 sorted CDF (V=2000, 16 rows x 4096 uniform u per kind):")
  for name, d in convention_drift().items():
    print(f"  {name}: {d['rate']:.2e} of draws differ ({d['differ']}, of which {d['near_ties']} near-tie swaps)")
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}")
  for name, cfg, params in _models(FLAGS.models, FLAGS.workdir):
    print(f"\n### {name}: {cfg.num_layers} x {cfg.d_model}, V={cfg.vocab_size}\n")
    print("| B | ar_vocab_cdf tok/s | ar_icdf tok/s | ratio | sampler ms: vocab_cdf / icdf / full sort "
          "| largest p (mean) |")
    print("|---|---|---|---|---|---|")
    for b in batches:
      r = decode_pair(cfg, params, b, FLAGS.num_tokens, FLAGS.repeats)
      s = sampler_row(cfg, params, b)
      print(f"| {b} | {r['vocab_cdf']:.0f} | {r['icdf']:.0f} | {r['icdf'] / r['vocab_cdf']:.2f}x | "
            f"{s['vocab_cdf_ms']:.2f} / {s['icdf_ms']:.2f} / {s['full_sort_ms']:.2f} | {s['p_max']:.3f} |", flush=True)


if __name__ == "__main__":
  cli.run(main)  # quiet logging (orbax narrates a checkpoint load at INFO); bad input -> one error line, exit 2
