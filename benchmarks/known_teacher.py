r"""The method self-test on a known teacher (a random sparse Markov chain): JSON + PNG curves vs step.

  python -m benchmarks.known_teacher --out docs/known_teacher            # the recommended recipe, k = 1 -> 2 -> 4
  python -m benchmarks.known_teacher --out /tmp/kt --loss ce --readout argmax --rollout teacher --hint_noise current

Writes OUT/known_teacher.json (settings, the teacher's KL to the chain, per stage: eval curve of per-slot KL / TV,
final per-slot KL / TV, tokens per teacher pass of speculative and shared-noise verify decoding, wall-clock) and
OUT/known_teacher.png. Logic: `kforcing_jax.evaluation.known_teacher`. With --bench_batch_sizes, also the decoding
speed of the last student against its teacher (AR with both samplers, the push-forward K, verify and speculative;
`evaluation.benchmark.run`), printed as a table and written to OUT/known_teacher_speed.json.
"""
import dataclasses
import json
import os

from absl import flags

from kforcing_jax import cli

from kforcing_jax.evaluation import known_teacher

_OUT = flags.DEFINE_string("out", "known_teacher_out", "output directory")
_BENCH = flags.DEFINE_list("bench_batch_sizes", [], "also time the last student's decoders at these batch sizes")
_OVERRIDES = {f.name: f for f in dataclasses.fields(known_teacher.Settings)}
for _f in dataclasses.fields(known_teacher.Settings):
  _d = _f.default
  if isinstance(_d, bool):
    flags.DEFINE_bool(_f.name, _d, f"Settings.{_f.name}")
  elif isinstance(_d, int):
    flags.DEFINE_integer(_f.name, _d, f"Settings.{_f.name}")
  elif isinstance(_d, float):
    flags.DEFINE_float(_f.name, _d, f"Settings.{_f.name}")
  elif isinstance(_d, str):
    flags.DEFINE_string(_f.name, _d, f"Settings.{_f.name}")
  else:
    flags.DEFINE_list(_f.name, [str(x) for x in _d], f"Settings.{_f.name}")


def plot(result: dict, path: str) -> None:
  """Per-slot KL vs step for every stage (one panel per stage), as a PNG."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  stages = result["stages"]
  fig, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 3.3), squeeze=False)
  for ax, (k, st) in zip(axes[0], stages.items()):
    steps = [c["step"] for c in st["curve"]]
    for i in range(int(k)):
      ax.plot(steps, [c["slot_kl"][i] for c in st["curve"]], marker="o", label=f"slot {i + 1}")
    ax.axhline(0.05, color="gray", lw=0.8, ls="--")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("KL(teacher || student), nats")
    ax.set_title(f"k={k}: {st['speculative_tokens_per_pass']:.2f} tok/pass (spec.)")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv):
  del argv
  kw = {}
  for name, f in _OVERRIDES.items():
    v = flags.FLAGS[name].value
    kw[name] = tuple(int(x) for x in v) if isinstance(f.default, tuple) else v
  settings = known_teacher.Settings(**kw)
  if not all(b.isdigit() and int(b) > 0 for b in _BENCH.value):
    raise ValueError(f"--bench_batch_sizes takes positive integers, got {_BENCH.value}")
  batches = [int(b) for b in _BENCH.value]
  os.makedirs(_OUT.value, exist_ok=True)
  models = {}
  result = known_teacher.run(settings, models=models)
  with open(os.path.join(_OUT.value, "known_teacher.json"), "w") as f:
    json.dump(result, f, indent=1)
  plot(result, os.path.join(_OUT.value, "known_teacher.png"))
  print(f"wrote {_OUT.value}/known_teacher.json and .png ({result['wall_s']:.0f} s)")
  if batches:
    from kforcing_jax.evaluation import benchmark

    cfg, params = models["student"]
    speed = benchmark.run(cfg, params, batches, ks=(cfg.k_max,), ar_samplers=("vocab_cdf", "icdf"),
                          ar_model=models["teacher"], teacher=models["teacher"], readout=settings.readout,
                          num_tokens=settings.decode_tokens, progress=False)  # the model's positions stop at 40
    with open(os.path.join(_OUT.value, "known_teacher_speed.json"), "w") as f:
      json.dump(speed, f, indent=1)
    print(benchmark.markdown_table(speed))


if __name__ == "__main__":
  cli.run(main)  # quiet logging; bad input -> one error line, exit 2
