r"""Evaluate a student against its teacher: `python -m kforcing_jax.evaluate --workdir S --teacher_workdir T`.

  python -m kforcing_jax.evaluate --workdir /tmp/kf/k4 --teacher_workdir /tmp/kf/ar --out /tmp/kf/eval_k4.json

Prints (and writes to --out) JSON on the held-out split: slot / prefix agreement with the teacher under shared
noise, verify-mode tokens per teacher pass, and gen-PPL under the teacher, unigram entropy and distinct-2/3 of
teacher, student and student-with-frequency-penalty samples. Logic: `kforcing_jax.evaluation.report`.
Bad input (no checkpoint, different tokenizers, K outside 1..k_train, an existing --out): one line, exit 2.
"""
import json
import os
import sys

from absl import app, flags

from kforcing_jax.evaluation import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "the push-forward student's workdir")
_TEACHER = flags.DEFINE_string("teacher_workdir", None, "the AR teacher's workdir")
_K = flags.DEFINE_integer("k", None, "slots / tokens per step (default: the student's k_max)")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 16, "samples per decoder")
_NUM_TOKENS = flags.DEFINE_integer("num_tokens", None, "new tokens per sample (default: seq_len - prompt_len)")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 6, "prompt tokens (bos included)")
_FREQ_PENALTY = flags.DEFINE_float("freq_penalty", None, "penalty of the penalised line (default by K)")
_SEED = flags.DEFINE_integer("seed", 0, "noise seed")
_OUT = flags.DEFINE_string("out", None, "output JSON (never overwritten)")


def main(argv):
  del argv
  import kforcing_jax
  from kforcing_jax.evaluation import report
  try:
    if _OUT.value and os.path.exists(_OUT.value):
      raise ValueError(f"{_OUT.value} exists; refusing to overwrite it")
    result = report.evaluate(kforcing_jax.load(_WORKDIR.value), kforcing_jax.load(_TEACHER.value), k=_K.value,
                             num_samples=_NUM_SAMPLES.value, prompt_len=_PROMPT_LEN.value,
                             num_tokens=_NUM_TOKENS.value, freq_penalty=_FREQ_PENALTY.value, seed=_SEED.value)
  except (ValueError, OSError) as e:
    cli.fail(e)
  text = json.dumps(result, indent=1, ensure_ascii=False)
  if _OUT.value:
    with open(_OUT.value + ".tmp", "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(_OUT.value + ".tmp", _OUT.value)
  print(text)


def run(argv=None):
  parse = lambda a: cli.parse_flags(a, ["workdir", "teacher_workdir"])
  app.run(main, argv=list(sys.argv if argv is None else argv), flags_parser=parse)


if __name__ == "__main__":
  run()
