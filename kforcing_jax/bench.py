r"""Decoding throughput: `python -m kforcing_jax.bench [--workdir DIR] [--paper_size] [--batch_sizes 1,8,32]`.

  python -m kforcing_jax.bench --paper_size --out /tmp/bench           # 12 x 768, V=30522, random weights
  python -m kforcing_jax.bench --workdir /tmp/kf/k4 --teacher_workdir /tmp/kf/ar --speculative --out /tmp/bench
  python -m kforcing_jax.bench --demo_size --out /tmp/bench             # the demo's 4 x 256, V=4096, random weights
  python -m kforcing_jax.bench --smollm2_size --out /tmp/bench          # SmolLM2-135M's shape (30 x 576, GQA, V=49152)
  python -m kforcing_jax.bench --paper_size --quick                     # a smoke run

Times AR (three samplers), push-forward K in --ks and (with a teacher) verify and optionally speculative mode,
prefill apart, median of --repeats after a warm-up; writes OUT/bench_<name>.json, OUT/speedup_<name>.png (never
over existing files; checked before anything runs) and prints a markdown table.
Logic: `kforcing_jax.evaluation.benchmark`. Bad input: one `error: ...` line, exit 2.
"""
import os

from absl import flags

from kforcing_jax import cli, files

AR_SAMPLERS = ("vocab_cdf", "icdf", "greedy")


def _name(workdir, paper_size, demo_size, quick, smollm2_size=False):
  name = (os.path.basename(os.path.normpath(workdir)) if workdir else "paper_size" if paper_size else
          "smollm2_size" if smollm2_size else "demo_size")
  return name + ("_quick" if quick and not workdir else "")


def bench(workdir=None, teacher_workdir=None, paper_size=False, batch_sizes=None, ks=(1, 2, 3, 4),
          ar_samplers=AR_SAMPLERS, num_tokens=122, prompt_len=6, repeats=3, unroll=1, dtype="float32", quick=False,
          out=None, progress=True, demo_size=False, speculative=False, readout=None, smollm2_size=False,
          feedback_layers=0) -> dict:
  """Checks every argument and output, runs one benchmark sweep and writes its JSON / PNG (see `benchmark.run`)."""
  if bool(workdir) + bool(paper_size) + bool(demo_size) + bool(smollm2_size) != 1:
    raise ValueError("give exactly one of --workdir, --paper_size, --demo_size or --smollm2_size")
  batch_sizes = cli.int_list(batch_sizes or ([1, 2] if quick else [1, 8, 32]), "batch_sizes")
  ks = cli.int_list(ks, "ks")
  for value, flag in ((num_tokens, "num_tokens"), (prompt_len, "prompt_len"), (repeats, "repeats"),
                      (unroll, "unroll")):
    cli.at_least(value, flag)
  bad = [s for s in ar_samplers if s not in AR_SAMPLERS]
  if bad or not ar_samplers:
    raise ValueError(f"--ar_samplers: unknown {bad or 'empty'}; expected some of {', '.join(AR_SAMPLERS)}")
  if (speculative or teacher_workdir) and not workdir:
    raise ValueError("--teacher_workdir / --speculative need --workdir (a trained student)")
  if speculative and not teacher_workdir:
    raise ValueError("--speculative needs --teacher_workdir")
  if feedback_layers and workdir:
    raise ValueError("--feedback_layers sets the random-weight sizes' token feedback; a checkpoint has its own")
  if quick:
    num_tokens, repeats = min(num_tokens, 12), 1
  name = _name(workdir, paper_size, demo_size, quick, smollm2_size)
  name += f"_fb{feedback_layers}" if feedback_layers else ""
  if out:
    files.check_output_dir(out, [f"bench_{name}.json", f"speedup_{name}.png"])
  from kforcing_jax.evaluation import benchmark

  teacher = ar_model = None
  if workdir:
    cfg, params, teacher, readout = _load_pair(workdir, teacher_workdir, max(ks), readout)
    ar_model = teacher
  else:
    cfg = (benchmark.smollm2_size_config if smollm2_size else benchmark.paper_size_config)(max(ks), dtype)
    if demo_size:
      cfg = cfg.replace(num_layers=4, d_model=256, num_heads=4, mlp_dim=1024, vocab_size=4096)
    if quick:  # the tiny stand-in keeps the family (SmolLM2: GQA, tied)
      cfg = cfg.replace(num_layers=2, d_model=64, num_heads=2, mlp_dim=128, vocab_size=512,
                        num_kv_heads=1 if cfg.num_kv_heads else 0)
    cfg = cfg.replace(feedback_layers=feedback_layers)
    params = benchmark.random_params(cfg)
  if prompt_len + num_tokens > cfg.max_len:
    raise ValueError(f"prompt_len + num_tokens = {prompt_len + num_tokens} exceeds max_len={cfg.max_len}")
  report = benchmark.run(cfg, params, batch_sizes, ks, ar_samplers=ar_samplers, ar_model=ar_model,
                         teacher=teacher, num_tokens=num_tokens, prompt_len=prompt_len, repeats=repeats,
                         unroll=unroll, progress=progress, speculative=speculative, readout=readout or "argmax")
  report["name"] = name
  if out:
    os.makedirs(out, exist_ok=True)
    files.write_json(os.path.join(out, f"bench_{name}.json"), report)
    benchmark.plot_speedup(report, os.path.join(out, f"speedup_{name}.png"), title=f"{name}: speed-up vs batch")
  return report


def _load_pair(workdir, teacher_workdir, k, readout):
  """Checks the student (and teacher) from their meta, then loads them; returns (cfg, params, teacher, readout)."""
  import sys

  import kforcing_jax
  from kforcing_jax import workdir as workdir_lib
  from kforcing_jax.decoding import dispatch
  from kforcing_jax.models.config import ModelConfig

  _, meta = workdir_lib.read_meta(workdir)
  cfg = ModelConfig.from_dict(meta["model"])
  if not cfg.is_pflm:
    raise ValueError(f"{workdir} holds an AR model; benchmark a push-forward student (with --teacher_workdir)")
  t_cfg = None
  if teacher_workdir:
    _, t_meta = workdir_lib.read_meta(teacher_workdir)
    t_cfg = ModelConfig.from_dict(t_meta["model"])
    workdir_lib.check_same_tokenizer(meta.get("tokenizer") or {}, t_meta.get("tokenizer") or {},
                                     f"student ({workdir})", f"teacher ({teacher_workdir})")
  _, _, readout = dispatch.resolve(cfg, "verify" if t_cfg else "pflm", k, t_cfg, readout, meta.get("readout"),
                                   lambda line: print(line, file=sys.stderr))
  model = kforcing_jax.load(workdir)
  teacher = None
  if teacher_workdir:
    t = kforcing_jax.load(teacher_workdir)
    teacher = (t.config, t.params)
  return model.config, model.params, teacher, readout


def define_flags() -> None:
  """Defines this tool's flags (called by `run`, so the tools' library functions can be imported together)."""
  flags.DEFINE_string("workdir", None, "a push-forward checkpoint to benchmark")
  flags.DEFINE_string("teacher_workdir", None, "its AR teacher (AR lines + verify mode)")
  flags.DEFINE_bool("speculative", False, "also time speculative decoding (needs --teacher_workdir)")
  flags.DEFINE_enum("readout", None, ["argmax", "sample"], "push-forward readout (default: as trained)")
  flags.DEFINE_bool("paper_size", False, "benchmark 12 x 768, vocab 30522 random weights")
  flags.DEFINE_bool("demo_size", False, "benchmark the demo architecture (4 x 256, vocab 4096), random weights")
  flags.DEFINE_bool("smollm2_size", False, "benchmark SmolLM2-135M's shape (llama, 30 x 576, 9 / 3 heads, vocab 49152, "
                    "tied), random weights")
  flags.DEFINE_list("batch_sizes", None, "batch sizes (default 1,8,32; --quick 1,2)")
  flags.DEFINE_list("ks", ["1", "2", "3", "4"], "push-forward K values")
  flags.DEFINE_list("ar_samplers", ["vocab_cdf", "icdf", "greedy"], "AR samplers to time")
  flags.DEFINE_integer("num_tokens", 122, "new tokens per row")
  flags.DEFINE_integer("prompt_len", 6, "prompt tokens per row")
  flags.DEFINE_integer("repeats", 3, "timed repeats after one warm-up")
  flags.DEFINE_integer("feedback_layers", 0, "random-weight sizes: token-feedback blocks (ModelConfig.feedback_layers)")
  flags.DEFINE_integer("unroll", 1, "lax.scan unroll")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "paper-size compute dtype")
  flags.DEFINE_bool("quick", False, "smoke run: batch 1,2, 12 tokens, 1 repeat, tiny paper-size stand-in")
  flags.DEFINE_string("out", None, "output directory for JSON + PNG")


def main(argv):
  del argv
  from kforcing_jax.evaluation import benchmark
  f = flags.FLAGS
  report = bench(f.workdir, f.teacher_workdir, f.paper_size, f.batch_sizes, f.ks, f.ar_samplers, f.num_tokens,
                 f.prompt_len, f.repeats, f.unroll, f.dtype, f.quick, f.out, demo_size=f.demo_size,
                 speculative=f.speculative, readout=f.readout, smollm2_size=f.smollm2_size,
                 feedback_layers=f.feedback_layers)
  print(benchmark.markdown_table(report))

def run(argv=None):
  define_flags()
  cli.run(main, argv)


if __name__ == "__main__":
  run()
