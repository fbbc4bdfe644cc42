r"""Decoding throughput: `python -m kforcing_jax.bench [--workdir DIR] [--paper_size] [--batch_sizes 1,8,32]`.

  python -m kforcing_jax.bench --paper_size --out /tmp/bench           # 12 x 768, V=30522, random weights
  python -m kforcing_jax.bench --workdir /tmp/kf/k4 --teacher_workdir /tmp/kf/ar --out /tmp/bench
  python -m kforcing_jax.bench --demo_size --out /tmp/bench             # the demo's 4 x 256, V=4096, random weights
  python -m kforcing_jax.bench --paper_size --quick                     # a smoke run

Times AR (three samplers), push-forward K in --ks and (with a teacher) verify mode, prefill apart, median of
--repeats after a warm-up; writes OUT/bench_<name>.json, OUT/speedup_<name>.png and prints a markdown table.
Logic: `kforcing_jax.evaluation.benchmark`. Bad input: one `error: ...` line, exit 2.
"""
import json
import os
import sys

from absl import app, flags

from kforcing_jax.evaluation import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "a push-forward checkpoint to benchmark")
_TEACHER = flags.DEFINE_string("teacher_workdir", None, "its AR teacher (AR lines + verify mode)")
_PAPER = flags.DEFINE_bool("paper_size", False, "benchmark 12 x 768, vocab 30522 random weights")
_DEMO = flags.DEFINE_bool("demo_size", False, "benchmark the demo architecture (4 x 256, vocab 4096), random weights")
_BATCHES = flags.DEFINE_list("batch_sizes", None, "batch sizes (default 1,8,32; paper size 1,8,32)")
_KS = flags.DEFINE_list("ks", ["1", "2", "3", "4"], "push-forward K values")
_SAMPLERS = flags.DEFINE_list("ar_samplers", ["vocab_cdf", "icdf", "greedy"], "AR samplers to time")
_NUM_TOKENS = flags.DEFINE_integer("num_tokens", 122, "new tokens per row")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 6, "prompt tokens per row")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed repeats after one warm-up")
_UNROLL = flags.DEFINE_integer("unroll", 1, "lax.scan unroll")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "paper-size compute dtype")
_QUICK = flags.DEFINE_bool("quick", False, "smoke run: batch 1,2, 12 tokens, 1 repeat, tiny paper-size stand-in")
_OUT = flags.DEFINE_string("out", None, "output directory for JSON + PNG")


def bench(workdir=None, teacher_workdir=None, paper_size=False, batch_sizes=None, ks=(1, 2, 3, 4),
          ar_samplers=("vocab_cdf", "icdf", "greedy"), num_tokens=122, prompt_len=6, repeats=3, unroll=1,
          dtype="float32", quick=False, out=None, progress=True, demo_size=False) -> dict:
  """Runs one benchmark sweep and writes its JSON / PNG; returns the report (see `benchmark.run`)."""
  from kforcing_jax.evaluation import benchmark

  if bool(workdir) + bool(paper_size) + bool(demo_size) != 1:
    raise ValueError("give exactly one of --workdir, --paper_size or --demo_size")
  batch_sizes = [int(b) for b in (batch_sizes or ([1, 2] if quick else [1, 8, 32]))]
  if min(batch_sizes) <= 0:
    raise ValueError(f"batch sizes must be >= 1, got {batch_sizes}")
  ks = [int(k) for k in ks]
  if quick:
    num_tokens, repeats = min(num_tokens, 12), 1
  teacher = None
  if paper_size or demo_size:
    cfg = benchmark.paper_size_config(max(ks), dtype)
    name = "paper_size"
    if demo_size:
      cfg, name = cfg.replace(num_layers=4, d_model=256, num_heads=4, mlp_dim=1024, vocab_size=4096), "demo_size"
    if quick:
      cfg, name = cfg.replace(num_layers=2, d_model=64, num_heads=2, mlp_dim=128, vocab_size=512), name + "_quick"
    params = benchmark.random_params(cfg)
    ar_model = None
  else:
    import kforcing_jax
    model = kforcing_jax.load(workdir)
    cfg, params = model.config, model.params
    if not cfg.is_pflm:
      raise ValueError(f"{workdir} holds an AR model; benchmark a push-forward student (with --teacher_workdir)")
    if max(ks) > cfg.k_max:
      raise ValueError(f"K={max(ks)} outside 1..{cfg.k_max} for {workdir}")
    ar_model = None
    if teacher_workdir:
      t = kforcing_jax.load(teacher_workdir)
      if t.tokenizer.spec.get("fingerprint") != model.tokenizer.spec.get("fingerprint"):
        raise ValueError("student and teacher use different tokenizers")
      teacher = ar_model = (t.config, t.params)
    name = os.path.basename(os.path.normpath(workdir))
  if prompt_len + num_tokens > cfg.max_len:
    raise ValueError(f"prompt_len + num_tokens = {prompt_len + num_tokens} exceeds max_len={cfg.max_len}")
  report = benchmark.run(cfg, params, batch_sizes, ks, ar_samplers=ar_samplers, ar_model=ar_model,
                         teacher=teacher, num_tokens=num_tokens, prompt_len=prompt_len, repeats=repeats,
                         unroll=unroll, progress=progress)
  report["name"] = name
  if out:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"bench_{name}.json"), "w") as f:
      json.dump(report, f, indent=1)
    benchmark.plot_speedup(report, os.path.join(out, f"speedup_{name}.png"), title=f"{name}: speed-up vs batch")
  return report


def main(argv):
  del argv
  from kforcing_jax.evaluation import benchmark
  try:
    report = bench(_WORKDIR.value, _TEACHER.value, _PAPER.value, _BATCHES.value, _KS.value, _SAMPLERS.value,
                   _NUM_TOKENS.value, _PROMPT_LEN.value, _REPEATS.value, _UNROLL.value, _DTYPE.value, _QUICK.value,
                   _OUT.value, demo_size=_DEMO.value)
  except (ValueError, OSError) as e:
    cli.fail(e)
  print(benchmark.markdown_table(report))


def run(argv=None):
  app.run(main, argv=list(sys.argv if argv is None else argv), flags_parser=cli.parse_flags)


if __name__ == "__main__":
  run()
