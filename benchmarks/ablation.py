r"""Distillation recipes on the main job's teacher: k = 1 -> 2 -> 4 per recipe, same seeds and steps, then
per-slot KL / TV, sample entropy and gen-PPL under the teacher, and tokens per teacher pass of both lossless modes.

  python -m benchmarks.ablation --teacher_workdir demo_out/ar --out docs/ablation
  python -m benchmarks.ablation --teacher_workdir demo_out/ar --out /tmp/abl --variants reference,kf --steps 40,30,20

Each variant trains its own chain in OUT/<variant>/{k1,k2,k4} with experiments/configs/tiny_cpu.py (the demo's
stages) plus the variant's overrides, and is evaluated with `evaluation.report.evaluate` against the teacher.
Writes OUT/ablation.json, OUT/ablation.md (the table in docs/results.md) and OUT/ablation.png (training loss of
every stage vs step). Stages already trained (DONE.json) are reused.
"""
import json
import os
import time

from absl import app, flags

from kforcing_jax import cli

_NO_FEEDBACK = dict(feedback_layers=0)  # the recipes before token feedback (RECIPES["kf"] sets it since 2026-12-07)
VARIANTS = {
    # The reference: CE against the teacher's inverse-CDF token, argmax readout, hint i encodes u_i, k -> 2k targets
    # from the k-model's doubling.
    "reference": dict(loss="ce", readout="argmax", rollout="teacher", target_teacher="previous",
                      model=dict(_NO_FEEDBACK, hint_noise="current")),
    # Same layout and readout, dense KL along the AR teacher's rollout (collapses: argmax of a calibrated q).
    "kl_argmax": dict(loss="kl", readout="argmax", rollout="teacher", target_teacher="ar",
                      model=dict(_NO_FEEDBACK, hint_noise="current")),
    # CE against tokens sampled along the student's own sampled prefix, hint i encodes u_{i-1}.
    "ce_sample": dict(loss="ce", readout="sample", rollout="student", target_teacher="ar",
                      model=dict(_NO_FEEDBACK, hint_noise="previous")),
    # Dense KL, k -> 2k targets from the k-model's doubling (its sampled readout) instead of the AR teacher.
    "kl_doubling": dict(loss="kl", readout="sample", rollout="teacher", target_teacher="previous",
                        model=dict(_NO_FEEDBACK, hint_noise="previous")),
    # Dense KL along the student's own sampled prefix (its decoder's prefix), AR-teacher conditionals.
    "kl_sample_student": dict(loss="kl", readout="sample", rollout="student", target_teacher="ar",
                              model=dict(_NO_FEEDBACK, hint_noise="previous")),
    # Dense KL, sampled readout, hint i encodes u_{i-1}, targets: the AR teacher's conditionals along its own
    # inverse-CDF rollout under the slot noises; every slot weighted alike.
    "kf": dict(loss="kl", readout="sample", rollout="teacher", target_teacher="ar",
               model=dict(_NO_FEEDBACK, hint_noise="previous")),
}
# The recommended recipe (`config_lib.RECIPES["kf"]`): kf with the earlier slots weighted by how many of a
# speculative iteration's prefix products they enter (`losses.slot_scales`).
VARIANTS["kf_prefix"] = dict(VARIANTS["kf"], slot_weighting="prefix")
# What else item 1 of the fidelity issue asks to measure, on top of the recommended recipe: an EMA of the student
# (the reference's 0.999 would barely leave the initial weights in 30-80 steps, so a short horizon) and a tau range.
VARIANTS["kf_ema"] = dict(VARIANTS["kf"], ema_decay=0.95)
VARIANTS["kf_tau"] = dict(VARIANTS["kf"], tau_range=[0.5, 1.5])
# Token feedback (`ModelConfig.feedback_layers`): kf_prefix with the emitted token of slot i-1 fed to hint i in the
# last 1 or 2 blocks (RECIPES["kf"]: 2).
VARIANTS["kf_fb1"] = dict(VARIANTS["kf_prefix"], model=dict(hint_noise="previous", feedback_layers=1))
VARIANTS["kf_fb2"] = dict(VARIANTS["kf_prefix"], model=dict(hint_noise="previous", feedback_layers=2))

_TEACHER = flags.DEFINE_string("teacher_workdir", "demo_out/ar", "the AR teacher's workdir")
_OUT = flags.DEFINE_string("out", "ablation_out", "output directory")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), f"variants to run, of {list(VARIANTS)}")
_STEPS = flags.DEFINE_list("steps", ["80", "50", "30"], "training steps of the k = 1, 2, 4 stages")
_LR = flags.DEFINE_float("lr", 0.0, "peak learning rate of every stage (0 = the config's)")
_SAMPLES = flags.DEFINE_integer("num_samples", 16, "samples per decoder in the evaluation")
_REPLOT = flags.DEFINE_bool("replot", False, "only rewrite OUT/ablation.md and .png from OUT/ablation.json")


def _stage_config(k, init_dir, overrides, steps, lr):
  from kforcing_jax.main_job import stage_config

  cfg = stage_config(f"stage=pflm,k={k}", init_dir, quick=False)
  with cfg.unlocked():
    for key, v in overrides.items():
      cfg[key].update(v) if isinstance(v, dict) else setattr(cfg, key, v)
    cfg.num_steps = steps
    cfg.eval_every = cfg.checkpoint_every = steps
    cfg.progress_bar = False
    if lr:
      cfg.optim.lr = lr
  return cfg


def _curve(wd):
  path = os.path.join(wd, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [(r["step"], r["loss"]) for r in rows if r.get("split") == "train" and "loss" in r]


def run_variant(name, teacher, out, steps, lr, num_samples):
  """Trains the k = 1 -> 2 -> 4 chain of one variant; returns {k: metrics}."""
  import kforcing_jax
  from kforcing_jax.evaluation import report
  from kforcing_jax.training import train

  res, init = {}, _TEACHER.value
  for k, n in zip((1, 2, 4), steps):
    wd = os.path.join(out, name, f"k{k}")
    marker = os.path.join(wd, "DONE.json")
    t0 = time.time()
    if not os.path.exists(marker):
      cfg = _stage_config(k, init, VARIANTS[name], n, lr)
      with cfg.unlocked():
        cfg.ar_teacher_workdir = _TEACHER.value
      metrics = train.train_and_evaluate(cfg, wd)
      metrics["stage_wall_s"] = time.time() - t0
      with open(marker, "w") as f:
        json.dump(metrics, f)
    with open(marker) as f:
      wall = json.load(f).get("stage_wall_s")
    ev = report.evaluate(kforcing_jax.load(wd), teacher, num_samples=num_samples)
    res[k] = {"steps": n, "train_wall_s": wall, "slot_kl": ev["slot_kl"], "slot_tv": ev["slot_tv"],
              "slot_tv_method": ev["slot_tv_method"], "entropy": ev["student"]["entropy"],
              "gen_ppl": ev["student"]["gen_ppl"], "speculative_tokens_per_pass": ev["speculative"]["tokens_per_pass"],
              "verify_tokens_per_pass": ev["verify"]["tokens_per_pass"], "slot_agreement": ev["slot_agreement"],
              "teacher_entropy": ev["teacher"]["entropy"], "teacher_gen_ppl": ev["teacher"]["gen_ppl"],
              "curve": _curve(wd)}
    print(f"[ablation] {name} k={k}: slot KL {[round(v, 3) for v in ev['slot_kl']]}, entropy "
          f"{res[k]['entropy']:.2f} (teacher {res[k]['teacher_entropy']:.2f}), gen-PPL {res[k]['gen_ppl']:.1f} "
          f"(teacher {res[k]['teacher_gen_ppl']:.1f}), tok/pass spec {res[k]['speculative_tokens_per_pass']:.2f} "
          f"verify {res[k]['verify_tokens_per_pass']:.2f}", flush=True)
    init = wd
  return res


def table(results: dict) -> str:
  """The ablation table (markdown): one row per (variant, k)."""
  rows = ["| recipe | k | steps | train s | slot KL | slot TV | entropy (teacher) | gen-PPL (teacher) | "
          "tok/pass spec. | tok/pass verify |", "|---|---|---|---|---|---|---|---|---|---|"]
  for name, per_k in results.items():
    for k, r in per_k.items():
      f = lambda xs, d=2: " ".join(f"{x:.{d}f}" for x in xs)
      rows.append(f"| {name} | {k} | {r['steps']} | {r['train_wall_s'] or 0:.0f} | {f(r['slot_kl'], 3)} | "
                  f"{f(r['slot_tv'])}{'*' if r['slot_tv_method'] != 'exact' else ''} | {r['entropy']:.2f} "
                  f"({r['teacher_entropy']:.2f}) | {r['gen_ppl']:.1f} ({r['teacher_gen_ppl']:.1f}) | "
                  f"{r['speculative_tokens_per_pass']:.2f} | {r['verify_tokens_per_pass']:.2f} |")
  return "\n".join(rows)


def plot(results: dict, path: str) -> None:
  """Top: training loss vs step of every variant's stages (one panel per k). Bottom: at the end of each stage
  (cumulative steps of the chain), slot-1 KL, mean KL of the later slots and speculative tokens per teacher pass."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(2, 3, figsize=(12, 6.4))
  for ax, k in zip(axes[0], (1, 2, 4)):
    for name, per_k in results.items():
      if k in per_k and per_k[k]["curve"]:
        s, v = zip(*per_k[k]["curve"])
        ax.plot(s, v, label=name)
    ax.set_title(f"k={k}: training loss (CE or KL, nats)")
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
  panels = (("slot-1 KL (nats)", lambda r: r["slot_kl"][0]),
            ("mean KL of slots 2..k (nats)", lambda r: sum(r["slot_kl"][1:]) / max(len(r["slot_kl"]) - 1, 1)),
            ("speculative tokens / teacher pass", lambda r: r["speculative_tokens_per_pass"]))
  for ax, (title, get) in zip(axes[1], panels):
    for name, per_k in results.items():
      rows = sorted(per_k.items())
      if title.startswith("mean KL"):
        rows = [kv for kv in rows if kv[0] > 1]
      cum = {k: sum(r["steps"] for kk, r in per_k.items() if kk <= k) for k, _ in rows}
      ax.plot([cum[k] for k, _ in rows], [get(r) for _, r in rows], marker="o", label=name)
    ax.set_title(title)
    ax.set_xlabel("chain step (end of k = 1, 2, 4)")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  import kforcing_jax

  unknown = [v for v in _VARIANTS.value if v not in VARIANTS]
  if unknown:
    raise app.UsageError(f"unknown variants {unknown}; expected some of {list(VARIANTS)}")
  steps = [int(s) for s in _STEPS.value]
  if len(steps) != 3 or min(steps) < 1:
    raise app.UsageError("--steps takes three positive step counts (k = 1, 2, 4)")
  os.makedirs(_OUT.value, exist_ok=True)
  summary = os.path.join(_OUT.value, "ablation.json")
  if _REPLOT.value:
    with open(summary) as f:
      results = {v: {int(k): r for k, r in per_k.items()} for v, per_k in json.load(f)["results"].items()}
  else:
    teacher = kforcing_jax.load(_TEACHER.value)
    results = {v: run_variant(v, teacher, _OUT.value, steps, _LR.value, _SAMPLES.value) for v in _VARIANTS.value}
    with open(summary, "w") as f:
      json.dump({"steps": steps, "lr": _LR.value, "results": results}, f, indent=1)
  with open(os.path.join(_OUT.value, "ablation.md"), "w") as f:
    f.write(table(results) + "\n")
  plot(results, os.path.join(_OUT.value, "ablation.png"))
  print(table(results))


if __name__ == "__main__":
  cli.run(main)  # quiet logging (orbax narrates every save at INFO); bad input -> one error line, exit 2
