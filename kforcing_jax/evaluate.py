r"""Evaluate a student against its teacher: `python -m kforcing_jax.evaluate --workdir S --teacher_workdir T`.

  python -m kforcing_jax.evaluate --workdir /tmp/kf/k4 --teacher_workdir /tmp/kf/ar --out /tmp/kf/eval_k4.json

Prints (and writes to --out) JSON on the held-out split: slot / prefix agreement with the teacher under shared
noise, verify-mode tokens per teacher pass, and gen-PPL under the teacher, unigram entropy and distinct-2/3 of
teacher, student and student-with-frequency-penalty samples; with --judge_workdir J also their gen-PPL under J
(`kforcing_jax.evaluation.judge`). Logic: `kforcing_jax.evaluation.report`.
Every flag, --out (a new file in a writable folder) and both checkpoints' metadata are checked before a model is
loaded; bad input is one line and exit status 2.
"""
import json
import sys

from absl import flags

from kforcing_jax import cli, files



def check_request(workdir, teacher_workdir, k=None, readout=None, num_samples=16, num_tokens=None, prompt_len=6,
                  out=None, judge_workdir=None) -> None:
  """Every check that needs no params (flags, --out, both metas, tokenizers, K, lengths); raises ValueError."""
  from kforcing_jax import workdir as workdir_lib
  from kforcing_jax.decoding import dispatch
  from kforcing_jax.models.config import ModelConfig

  cli.at_least(num_samples, "num_samples")
  cli.at_least(prompt_len, "prompt_len")
  cli.at_least(num_tokens, "num_tokens")
  if out:
    files.check_new_file(out)
  (_, s_meta), (_, t_meta) = workdir_lib.read_meta(workdir), workdir_lib.read_meta(teacher_workdir)
  s_cfg, t_cfg = ModelConfig.from_dict(s_meta["model"]), ModelConfig.from_dict(t_meta["model"])
  workdir_lib.check_same_tokenizer(s_meta.get("tokenizer") or {}, t_meta.get("tokenizer") or {},
                                   f"student ({workdir})", f"teacher ({teacher_workdir})")
  dispatch.resolve(s_cfg, "verify", k, t_cfg, readout, s_meta.get("readout"))
  if judge_workdir:
    _, j_meta = workdir_lib.read_meta(judge_workdir)
    if ModelConfig.from_dict(j_meta["model"]).is_pflm:
      raise ValueError(f"--judge_workdir {judge_workdir} holds a push-forward model; give an AR model")
  for c in (s_cfg, t_cfg):
    if prompt_len + (num_tokens or 1) > c.max_len:
      raise ValueError(f"--prompt_len {prompt_len} + --num_tokens {num_tokens or 1} exceed max_len={c.max_len}")


def define_flags() -> None:
  """Defines this tool's flags (called by `run`, so the tools' library functions can be imported together)."""
  flags.DEFINE_string("workdir", None, "the push-forward student's workdir")
  flags.DEFINE_string("teacher_workdir", None, "the AR teacher's workdir")
  flags.DEFINE_integer("k", None, "slots / tokens per step (default: the student's k_max)")
  flags.DEFINE_enum("readout", None, ["argmax", "sample"], "student readout (default: as trained)")
  flags.DEFINE_integer("num_samples", 16, "samples per decoder")
  flags.DEFINE_integer("num_tokens", None, "new tokens per sample (default: seq_len - prompt_len)")
  flags.DEFINE_integer("prompt_len", 6, "prompt tokens (bos included)")
  flags.DEFINE_float("freq_penalty", None, "penalty of the penalised line (default by K)")
  flags.DEFINE_integer("seed", 0, "noise seed")
  flags.DEFINE_string("out", None, "output JSON (never overwritten)")
  flags.DEFINE_string("judge_workdir", None, "another AR model (e.g. a converted SmolLM2): gen-PPL of every sample "
                      "line under it too, re-tokenizing the text when its tokenizer differs")


def main(argv):
  del argv
  import kforcing_jax
  from kforcing_jax.evaluation import report

  f = flags.FLAGS
  check_request(f.workdir, f.teacher_workdir, f.k, f.readout, f.num_samples, f.num_tokens, f.prompt_len, f.out,
                f.judge_workdir)
  result = report.evaluate(kforcing_jax.load(f.workdir), kforcing_jax.load(f.teacher_workdir), k=f.k,
                           num_samples=f.num_samples, prompt_len=f.prompt_len, num_tokens=f.num_tokens,
                           freq_penalty=f.freq_penalty, seed=f.seed, readout=f.readout,
                           warn=lambda line: print(line, file=sys.stderr),
                           judge=kforcing_jax.load(f.judge_workdir) if f.judge_workdir else None)
  if f.out:
    files.write_json(f.out, result)
  print(json.dumps(result, indent=1, ensure_ascii=False))

def run(argv=None):
  define_flags()
  cli.run(main, argv, required=["workdir", "teacher_workdir"])


if __name__ == "__main__":
  run()
