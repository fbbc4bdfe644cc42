r"""The main job: `python -m kforcing_jax.demo [--out DIR] [--quick]`.

Builds the embedded corpus (King James Bible) and its BPE tokenizer, trains the tiny AR teacher, distills it
k = 1 -> 2 -> 4 (experiments/configs/tiny_cpu.py), evaluates k = 2 and k = 4 against the teacher, samples, and
benchmarks the decoders; ends with one table (teacher, k2, k4: gen-PPL, entropy, slot agreement, tokens/s,
speed-up) and a few samples, and writes OUT/summary.json, OUT/speedup.png, OUT/slot_agreement.png,
OUT/samples.json. A rerun resumes: finished stages are skipped, an interrupted one continues from its checkpoint.
--quick runs 20-step stages of a smaller model (a smoke run for tests). Logic: `kforcing_jax.main_job`.
"""
from absl import flags

from kforcing_jax import cli

_OUT = flags.DEFINE_string("out", "demo_out", "output directory (workdirs, JSON, plots)")
_QUICK = flags.DEFINE_bool("quick", False, "smoke run: 20 steps per stage, small model, short eval and bench")


def main(argv):
  del argv
  from kforcing_jax import main_job
  main_job.run_demo(_OUT.value, _QUICK.value)


def run(argv=None):
  cli.run(main, argv)


if __name__ == "__main__":
  run()
