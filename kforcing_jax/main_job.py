"""The demo main job: corpus + tokenizer -> AR teacher -> k = 1 -> 2 -> 4 students -> evaluation, samples, benchmark.

Stages live in OUT/{ar,k1,k2,k4} (trainer workdirs, kforcing_jax/demo_config.py) and OUT/{eval_k2,eval_k4,
bench_demo}.json. A finished training stage leaves OUT/<stage>/DONE.json (its final metrics) and is skipped on a
rerun; an interrupted one resumes from its checkpoint (the trainer restores params, optimizer, RNG and data
iterator); evaluation / benchmark / sample files that exist are reused. `quick` runs every stage as a 20-step smoke run of a
smaller model (the `runlocal` config arg plus the overrides below), a short evaluation and a small benchmark.
"""
import json
import os
import time
from typing import Optional

from kforcing_jax import demo_config, files

STAGES = (("ar", "stage=ar", None), ("k1", "stage=pflm,k=1", "ar"), ("k2", "stage=pflm,k=2", "k1"),
          ("k4", "stage=pflm,k=4", "k2"))
QUICK_MODEL = dict(num_layers=2, d_model=128, num_heads=4, mlp_dim=256)
SUMMARY_KEYS = ("gen_ppl", "entropy", "slot_agreement", "tokens_per_s", "speedup")
STUDENT_KEYS = ("slot_kl", "speculative_tokens_per_pass", "verify_tokens_per_pass")


def stage_config(arg: str, teacher_dir: Optional[str], quick: bool):
  """The trainer config of one demo stage (kforcing_jax/demo_config.py; quick: runlocal + a smaller model)."""
  config = demo_config.get_config(arg + (",runlocal" if quick else ""))
  with config.unlocked():
    if teacher_dir:
      config.teacher_workdir = teacher_dir
    config.progress_bar = True
    if quick:
      config.model.update(QUICK_MODEL)
      if config.model.feedback_layers:  # half the blocks, as the full demo's 2 of 4
        config.model.feedback_layers = 1
      config.seq_len = min(int(config.seq_len), 64)
      config.batch_size = 8
      config.eval_batches = 1
  return config


def _write_json(path, obj):
  files.write_json(path, obj)


def _cached(path, make, log):
  if os.path.exists(path):
    log(f"[demo] reusing {path}")
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  obj = make()
  _write_json(path, obj)
  return obj


def train_stages(out: str, quick: bool, log=print) -> dict:
  """Trains (or skips / resumes) every stage; returns {stage: final metrics}."""
  from kforcing_jax.training import train

  done = {}
  for name, arg, teacher in STAGES:
    wd = os.path.join(out, name)
    marker = os.path.join(wd, "DONE.json")
    if os.path.exists(marker):
      log(f"[demo] stage {name}: already trained ({marker})")
      with open(marker) as f:
        done[name] = json.load(f)
      continue
    log(f"[demo] stage {name}: training ({arg}{', quick' if quick else ''})")
    cfg = stage_config(arg, os.path.join(out, teacher) if teacher else None, quick)
    t0 = time.time()
    metrics = train.train_and_evaluate(cfg, wd)
    metrics["stage_wall_s"] = time.time() - t0
    _write_json(marker, metrics)
    done[name] = metrics
  return done


def summarize(evals: dict, bench: dict, batch: int) -> dict:
  """summary.json: teacher / k2 / k4 with gen_ppl, entropy, slot_agreement, tokens_per_s, speedup."""
  res, spd = bench["results"][str(batch)], bench["speedup"][str(batch)]
  base = bench["baseline"]
  teacher = evals["k4"]["teacher"]
  out = {"teacher": {"gen_ppl": teacher["gen_ppl"], "entropy": teacher["entropy"], "slot_agreement": 1.0,
                     "tokens_per_s": res[base]["tokens_per_s"], "speedup": 1.0}}
  for name, k in (("k2", 2), ("k4", 4)):
    ev = evals[name]
    out[name] = {"gen_ppl": ev["student"]["gen_ppl"], "entropy": ev["student"]["entropy"],
                 "slot_agreement": sum(ev["slot_agreement"]) / len(ev["slot_agreement"]),
                 "tokens_per_s": res[f"k{k}"]["tokens_per_s"], "speedup": spd[f"k{k}"],
                 "gen_ppl_penalty": ev["student_penalty"]["gen_ppl"],
                 "entropy_penalty": ev["student_penalty"]["entropy"],
                 "slot_agreement_per_slot": ev["slot_agreement"],
                 "verify_tokens_per_pass": ev["verify"]["tokens_per_pass"],
                 "speculative_tokens_per_pass": ev["speculative"]["tokens_per_pass"],
                 "slot_kl": ev["slot_kl"], "slot_tv": ev["slot_tv"], "readout": ev["readout"]}
  for mode, row in bench.get("lossless_batch1", {}).items():  # K=4 drafts against the teacher, batch 1
    name = mode.split("_")[0]
    out["k4"].update({f"{name}_tokens_per_s": row["tokens_per_s"], f"{name}_speedup": row["speedup"]})
  out["settings"] = {"batch_size": batch, "ar_baseline": base, "num_tokens_eval": evals["k4"]["num_tokens"],
                     "num_samples": evals["k4"]["num_samples"]}
  return out


def table(summary: dict) -> str:
  """The demo's closing table (markdown)."""
  rows = ["| model | gen-PPL (teacher) | entropy | slot KL | tokens/pass speculative / verify | slot agreement "
          "| tokens/s | speed-up |", "|---|---|---|---|---|---|---|---|"]
  for name in ("teacher", "k2", "k4"):
    s = summary[name]
    kl = " ".join(f"{v:.2f}" for v in s["slot_kl"]) if "slot_kl" in s else "-"
    tpp = (f"{s['speculative_tokens_per_pass']:.2f} / {s['verify_tokens_per_pass']:.2f}"
           if "speculative_tokens_per_pass" in s else "1 / 1")
    rows.append(f"| {name} | {s['gen_ppl']:.2f} | {s['entropy']:.3f} | {kl} | {tpp} | {s['slot_agreement']:.3f} | "
                f"{s['tokens_per_s']:.0f} | {s['speedup']:.2f}x |")
  for mode in ("speculative", "verify"):  # the teacher's samples (exactly / token for token), K=4 drafts
    if f"{mode}_tokens_per_s" in summary["k4"]:
      k4 = summary["k4"]
      rows.append(f"| k4 {mode} (lossless) | teacher's | | | | | {k4[f'{mode}_tokens_per_s']:.0f} | "
                  f"{k4[f'{mode}_speedup']:.2f}x |")
  return "\n".join(rows)


def run_demo(out: str = "demo_out", quick: bool = False, log=print) -> dict:
  """The whole demo (resumable); returns the summary dict and writes OUT/summary.json, plots and samples."""
  import kforcing_jax
  from kforcing_jax.evaluation import benchmark, report

  t0 = time.time()
  os.makedirs(out, exist_ok=True)
  train_stages(out, quick, log)
  teacher = kforcing_jax.load(os.path.join(out, "ar"))
  students = {n: kforcing_jax.load(os.path.join(out, n)) for n in ("k2", "k4")}
  # quick: no penalty (its line then reuses the unpenalized decoder instead of compiling one more per student)
  ev_kw = dict(num_samples=2, num_tokens=16, agreement_seqs=1, freq_penalty=0.0) if quick else dict(num_samples=32)
  evals = {}
  for name, model in students.items():
    log(f"[demo] evaluating {name} against the teacher")
    evals[name] = _cached(os.path.join(out, f"eval_{name}.json"), lambda m=model: report.evaluate(m, teacher, **ev_kw),
                          log)
  # Each batch size is one more compile per decoder: quick times batch 1 only, the full demo 1 and 32 (the sweep
  # over more batch sizes is `python -m kforcing_jax.bench`).
  batches = [1] if quick else [1, 32]
  t_pair = (teacher.config, teacher.params)
  # The demo times what its table and plot show (AR, K = 2, 4); the full sweep (more samplers, K = 1..4, verify
  # mode) is `python -m kforcing_jax.bench --workdir OUT/k4 --teacher_workdir OUT/ar`.
  bench_kw = (dict(ks=(2, 4), num_tokens=12, repeats=1, ar_samplers=("vocab_cdf",)) if quick else
              dict(ks=(2, 4), repeats=3, ar_samplers=("vocab_cdf",)))

  def make_bench():
    log("[demo] benchmarking decoders (the k4 checkpoint at each K, its trained readout)")
    k4 = students["k4"]
    sweep = benchmark.run(k4.config, k4.params, batches, ar_model=t_pair, readout=k4.trained_readout, **bench_kw)
    # Both lossless modes at batch 1 (the case where they can beat AR), next to AR in the same run.
    lossless = benchmark.run(k4.config, k4.params, [1], ar_model=t_pair, teacher=t_pair,
                             readout=k4.trained_readout, **{**bench_kw, "ks": (4,)})
    sweep["lossless_batch1"] = {n: {"tokens_per_s": lossless["results"]["1"][n]["tokens_per_s"],
                                    "speedup": lossless["speedup"]["1"][n]} for n in ("verify_k4", "speculative_k4")}
    return sweep

  bench = _cached(os.path.join(out, "bench_demo.json"), make_bench, log)
  benchmark.plot_speedup(bench, os.path.join(out, "speedup.png"), title="demo model: speed-up vs batch size")
  _plot_agreement(evals, os.path.join(out, "slot_agreement.png"))

  prompts = ["In the beginning", "And the LORD said unto Moses", "Blessed are"]
  n = 12 if quick else 48

  def make_samples():
    samples = [{"model": "teacher (AR)", "texts": teacher.generate(prompts, n, seed=1)}]
    for name, model in students.items():
      k = model.k_max
      # No penalized lines: each is one more compile per student (~10 s), and since the students keep the teacher's
      # entropy there is no collapse left to counter; the penalized numbers are in eval_<k>.json.
      samples.append({"model": f"{name} (K={k})", "texts": model.generate(prompts, n, k=k, seed=1)})
    return {"prompts": prompts, "samples": samples}

  samples = _cached(os.path.join(out, "samples.json"), make_samples, log)["samples"]

  summary = summarize(evals, bench, 1)
  summary["wall_s"] = time.time() - t0
  summary["quick"] = quick
  _write_json(os.path.join(out, "summary.json"), summary)
  log("\n" + table(summary))
  log(f"(tokens/s at batch 1 over {bench['settings']['num_tokens']} new tokens, prefill excluded; speed-up over AR "
      f"with the {bench['baseline']} sampler; full sweep in {os.path.join(out, 'bench_demo.json')})\n")
  for s in samples:
    log(f"--- {s['model']}")
    for p, t in zip(prompts, s["texts"]):
      log(f"  {p} | {t!r}")
  log(f"[demo] done in {summary['wall_s']:.0f} s; outputs in {out}")
  return summary


def _plot_agreement(evals: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, ev in evals.items():
    ks = range(1, len(ev["slot_agreement"]) + 1)
    ax.plot(ks, ev["slot_agreement"], marker="o", label=f"{name}: slot")
    ax.plot(ks, ev["prefix_agreement"], marker="x", ls="--", label=f"{name}: prefix")
  ax.set_xlabel("slot i")
  ax.set_ylabel("agreement with the teacher (shared noise)")
  ax.set_ylim(0, 1)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
