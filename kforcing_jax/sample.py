r"""Sample from a checkpoint: `python -m kforcing_jax.sample --workdir DIR (--prompt TEXT ... | --prompt_file F)`.

  python -m kforcing_jax.sample --workdir /tmp/kf/k4 --prompt "In the beginning" --k 4 --num_tokens 64
  python -m kforcing_jax.sample --workdir /tmp/kf/k4 --prompt_file prompts.txt --k 4 --verify_with /tmp/kf/ar \
      --out samples.jsonl

Writes one JSON line per prompt ({"index", "prompt", "completion", "num_tokens", "k", "mode", ...}) to --out (or
stdout), with a progress bar over batches. --k 0 samples AR; --verify_with runs the lossless draft-and-verify mode.
Bad input (K outside 1..k_train, temperature <= 0 or NaN, a prompt too long for max_len, an empty prompt, batch
size <= 0, no checkpoint, different tokenizers in verify mode, an existing --out file) prints one `error: ...`
line and exits with status 2. All logic lives in `kforcing_jax.api`.
"""
import json
import os
import sys

from absl import app, flags

from kforcing_jax.evaluation import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory with checkpoints/ and tokenizer/")
_PROMPT = flags.DEFINE_multi_string("prompt", [], "a prompt (repeatable)")
_PROMPT_FILE = flags.DEFINE_string("prompt_file", None, "UTF-8 text file, one prompt per non-blank line")
_K = flags.DEFINE_integer("k", None, "tokens per step (default: the model's k_max; 0 = AR sampling)")
_NUM_TOKENS = flags.DEFINE_integer("num_tokens", 64, "new tokens per prompt")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "AR / verify temperature; push-forward noise-encoder tau")
_SEED = flags.DEFINE_integer("seed", 0, "noise seed")
_FREQ_PENALTY = flags.DEFINE_float("freq_penalty", 0.0, "push-forward frequency penalty (0 = off)")
_VERIFY_WITH = flags.DEFINE_string("verify_with", None, "AR teacher workdir: lossless draft-and-verify mode")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "prompts per decoder call")
_OUT = flags.DEFINE_string("out", None, "output JSONL (default: stdout); never overwritten")


def read_prompts(prompts, prompt_file):
  """Prompts from the flags; raises ValueError on none / both / an unreadable file."""
  if prompts and prompt_file:
    raise ValueError("give --prompt or --prompt_file, not both")
  if prompt_file:
    try:
      with open(prompt_file, encoding="utf-8") as f:
        prompts = [line.rstrip("\n") for line in f if line.strip()]
    except UnicodeDecodeError:
      raise ValueError(f"{prompt_file} is not UTF-8 text") from None
    except OSError as e:
      raise ValueError(f"cannot read {prompt_file}: {e.strerror}") from None
  if not prompts:
    raise ValueError("no prompts: give --prompt TEXT or --prompt_file F")
  return list(prompts)


def sample_to_jsonl(workdir, prompts, num_tokens, k, temperature, seed, freq_penalty, verify_with, batch_size,
                    out=None, progress=True) -> list[dict]:
  """Samples every prompt in batches and writes JSON lines (atomically, to `out` if given).

  Returns:
    The records written.
  """
  from tqdm.auto import tqdm

  import kforcing_jax

  if batch_size <= 0:
    raise ValueError(f"batch size must be >= 1, got {batch_size}")
  if out and os.path.exists(out):
    raise ValueError(f"{out} exists; refusing to overwrite it (choose another --out)")
  model = kforcing_jax.load(workdir)
  teacher = kforcing_jax.load(verify_with) if verify_with else None
  kk = model.k_max if k is None else k
  mode = "verify" if teacher else ("ar" if kk == 0 else "pflm")
  records = []
  starts = range(0, len(prompts), batch_size)
  for s in tqdm(starts, desc="sampling", unit="batch", disable=not progress):
    chunk = prompts[s:s + batch_size]
    ids = model.encode_prompts(chunk)
    res = model.generate_ids(ids, num_tokens, k, temperature, seed, freq_penalty, teacher, row_offset=s)
    for i, (p, row, n) in enumerate(zip(chunk, res.tokens, res.lengths)):
      rec = {"index": s + i, "prompt": p, "completion": model.tokenizer.decode(row[:n]), "num_tokens": int(n),
             "k": int(kk), "mode": mode, "seed": seed}
      if res.teacher_passes is not None:
        rec["teacher_passes"] = int(res.teacher_passes[i])
      records.append(rec)
  text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  if out:
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
    os.replace(tmp, out)
  else:
    sys.stdout.write(text)
  return records


def main(argv):
  del argv
  try:
    prompts = read_prompts(_PROMPT.value, _PROMPT_FILE.value)
    sample_to_jsonl(_WORKDIR.value, prompts, _NUM_TOKENS.value, _K.value, _TEMPERATURE.value, _SEED.value,
                    _FREQ_PENALTY.value, _VERIFY_WITH.value, _BATCH_SIZE.value, _OUT.value)
  except (ValueError, OSError) as e:
    cli.fail(e)


def run(argv=None):
  parse = lambda a: cli.parse_flags(a, ["workdir"])
  app.run(main, argv=list(sys.argv if argv is None else argv), flags_parser=parse)


if __name__ == "__main__":
  run()
