r"""Training curves from `metrics.jsonl` files: loss, and per-slot agreement with the teacher for each stage.

  python -m kforcing_jax.training.plots --out docs/ ar=/tmp/kf/ar k1=/tmp/kf/k1 k2=/tmp/kf/k2 k4=/tmp/kf/k4

Writes OUT/training_loss.png (train and eval loss per stage) and OUT/training_slot_accuracy.png (eval accuracy of
each slot against the teacher's targets, and all-slots-correct, per pflm stage), and prints a summary table.
"""
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(workdir: str) -> dict:
  """{split: [row, ...]} from WORKDIR/metrics.jsonl (a resumed run's later rows win for a repeated step)."""
  rows = {}
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      r = json.loads(line)
      rows[(r["split"], r["step"])] = r
  out = {}
  for (split, _), r in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1])):
    out.setdefault(split, []).append(r)
  return out


def plot_runs(runs: dict, out_dir: str) -> list[str]:
  """Draws the two figures for {label: workdir}.

  Args:
    runs: label -> workdir, in stage order.
    out_dir: where the PNGs go.
  Returns:
    The written paths.
  """
  os.makedirs(out_dir, exist_ok=True)
  data = {label: read_metrics(w) for label, w in runs.items()}
  fig, axes = plt.subplots(1, len(data), figsize=(4 * len(data), 3.2), squeeze=False)
  for ax, (label, m) in zip(axes[0], data.items()):
    for split, style in (("train", "-"), ("eval", "o-")):
      rows = m.get(split, [])
      ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], style, label=split, ms=3)
    ax.set_title(f"{label}: loss")
    ax.set_xlabel("step")
    ax.legend()
  fig.tight_layout()
  paths = [os.path.join(out_dir, "training_loss.png")]
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)

  pflm = {label: m for label, m in data.items() if any("acc_slot1" in r for r in m.get("eval", []))}
  if pflm:
    fig, axes = plt.subplots(1, len(pflm), figsize=(4 * len(pflm), 3.2), squeeze=False)
    for ax, (label, m) in zip(axes[0], pflm.items()):
      rows = m["eval"]
      slots = sorted(int(key[len("acc_slot"):]) for key in rows[0] if key.startswith("acc_slot"))
      for i in slots:
        ax.plot([r["step"] for r in rows], [r[f"acc_slot{i}"] for r in rows], "o-", ms=3, label=f"slot {i}")
      ax.plot([r["step"] for r in rows], [r["acc_all"] for r in rows], "k--", label="all slots")
      ax.set_title(f"{label}: eval agreement with teacher")
      ax.set_xlabel("step")
      ax.set_ylim(0, 1)
      ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "training_slot_accuracy.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
  return paths


def summary(runs: dict) -> str:
  """A markdown table of each run's first and last eval metrics."""
  lines = ["| stage | steps | eval loss (start -> end) | eval acc per slot (end) | all slots (end) |",
           "|---|---|---|---|---|"]
  for label, w in runs.items():
    ev = read_metrics(w).get("eval", [])
    if not ev:
      continue
    first, last = ev[0], ev[-1]
    slots = sorted(int(key[len("acc_slot"):]) for key in last if key.startswith("acc_slot"))
    accs = " / ".join(f"{last[f'acc_slot{i}']:.3f}" for i in slots) or f"{last.get('acc', float('nan')):.3f}"
    lines.append(f"| {label} | {last['step']} | {first['loss']:.3f} -> {last['loss']:.3f} | {accs} | "
                 f"{last.get('acc_all', float('nan')):.3f} |")
  return "\n".join(lines)


def main(argv):
  args = argv[1:]
  out_dir = "docs"
  if "--out" in args:
    i = args.index("--out")
    out_dir = args[i + 1]
    del args[i:i + 2]
  runs = dict(a.split("=", 1) for a in args)
  if not runs:
    print("usage: python -m kforcing_jax.training.plots [--out DIR] label=WORKDIR ...", file=sys.stderr)
    sys.exit(2)
  for label, w in runs.items():
    if not os.path.exists(os.path.join(w, "metrics.jsonl")):
      print(f"error: {w} has no metrics.jsonl ({label})", file=sys.stderr)
      sys.exit(2)
  for p in plot_runs(runs, out_dir):
    print("wrote", p)
  print(summary(runs))


if __name__ == "__main__":
  main(sys.argv)
