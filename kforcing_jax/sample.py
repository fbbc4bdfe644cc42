r"""Sample from a checkpoint: `python -m kforcing_jax.sample --workdir DIR (--prompt TEXT ... | --prompt_file F)`.

  python -m kforcing_jax.sample --workdir /tmp/kf/k4 --prompt "In the beginning" --k 4 --num_tokens 64
  python -m kforcing_jax.sample --workdir /tmp/kf/k4 --prompt_file prompts.txt --k 4 --verify_with /tmp/kf/ar \
      --out samples.jsonl
  python -m kforcing_jax.sample --workdir /tmp/kf/k4 --prompt "In the beginning" --speculative_with /tmp/kf/ar

Writes one JSON line per prompt ({"index", "prompt", "completion", "num_tokens", "k", "mode", "readout", ...}) to
--out (or stdout), with a progress bar over batches. --k 0 samples AR; --verify_with runs the lossless
draft-and-verify mode, --speculative_with exact speculative sampling (both with that AR teacher). Every flag, the
checkpoints' metadata, the tokenizers and every prompt's length are checked before a model is loaded or a batch is
decoded; bad input prints one `error: ...` line and exits with status 2. Logic: `kforcing_jax.api`.
"""
import json
import sys

from absl import flags

from kforcing_jax import cli, files



def read_prompts(prompts, prompt_file):
  """(prompts, names) from the flags; names say where each came from. Raises ValueError on none / both / a bad file."""
  if prompts and prompt_file:
    raise ValueError("give --prompt or --prompt_file, not both")
  if prompt_file:
    try:
      with open(prompt_file, encoding="utf-8") as f:
        numbered = [(i + 1, line.rstrip("\n")) for i, line in enumerate(f) if line.strip()]
    except UnicodeDecodeError:
      raise ValueError(f"{prompt_file} is not UTF-8 text") from None
    except OSError as e:
      raise ValueError(f"cannot read {prompt_file}: {e.strerror}") from None
    return [p for _, p in numbered], [f"{prompt_file} line {n}" for n, _ in numbered]
  if not prompts:
    raise ValueError("no prompts: give --prompt TEXT or --prompt_file F")
  return list(prompts), [f"--prompt {i + 1}" for i in range(len(prompts))]


def _check_request(workdir, teacher_dir, prompts, names, num_tokens, batch_size, out, **req):
  """Every check that needs no params: flags, outputs, both checkpoints' meta and tokenizers, each prompt's length."""
  from kforcing_jax import api, workdir as workdir_lib
  from kforcing_jax.decoding import dispatch
  from kforcing_jax.models.config import ModelConfig

  dispatch.check_scalars(num_tokens, req["seed"], req["temperature"], req["tau"], req["freq_penalty"])
  cli.at_least(batch_size, "batch_size")
  if out:
    files.check_new_file(out)
  _, meta = workdir_lib.read_meta(workdir)
  cfg = ModelConfig.from_dict(meta["model"])
  tok = workdir_lib.load_tokenizer(workdir, meta.get("tokenizer"))
  t_cfg = None
  if teacher_dir:
    _, t_meta = workdir_lib.read_meta(teacher_dir)
    t_cfg = ModelConfig.from_dict(t_meta["model"])
    workdir_lib.check_same_tokenizer(tok.spec, t_meta.get("tokenizer") or {}, f"student ({workdir})",
                                     f"teacher ({teacher_dir})")
  mode, k, readout = dispatch.resolve(cfg, req["mode"], req["k"], t_cfg, req["readout"], meta.get("readout"),
                                      lambda line: print(line, file=sys.stderr))
  for name, ids in zip(names, api.encode(tok, prompts, names)):
    for c in (cfg, t_cfg) if t_cfg else (cfg,):
      if len(ids) + num_tokens > c.max_len:
        raise ValueError(f"{name}: {len(ids)} prompt tokens + {num_tokens} new tokens exceed max_len={c.max_len}")
  return mode, k, readout


def sample_to_jsonl(workdir, prompts, num_tokens, k=None, temperature=1.0, seed=0, freq_penalty=0.0,
                    verify_with=None, batch_size=16, out=None, progress=True, *, names=None, mode=None,
                    speculative_with=None, readout=None, tau=1.0) -> list[dict]:
  """Checks everything, then samples every prompt in batches and writes JSON lines (atomically, to `out` if given).

  Returns:
    The records written.
  """
  from tqdm.auto import tqdm

  import kforcing_jax

  if verify_with and speculative_with:
    raise ValueError("give --verify_with or --speculative_with, not both")
  teacher_dir = verify_with or speculative_with
  mode = mode or ("verify" if verify_with else "speculative" if speculative_with else None)
  if mode in ("verify", "speculative") and not teacher_dir:
    raise ValueError(f"--mode {mode} needs a teacher: --{mode}_with DIR")
  names = names or [f"prompt {i + 1}" for i in range(len(prompts))]
  req = dict(mode=mode, k=k, temperature=temperature, tau=tau, freq_penalty=freq_penalty, seed=seed,
             readout=readout)
  mode, kk, readout = _check_request(workdir, teacher_dir, prompts, names, num_tokens, batch_size, out, **req)
  model = kforcing_jax.load(workdir)
  teacher = kforcing_jax.load(teacher_dir) if teacher_dir else None
  records = []
  for s in tqdm(range(0, len(prompts), batch_size), desc="sampling", unit="batch", disable=not progress):
    chunk = prompts[s:s + batch_size]
    res = model.generate_ids(model.encode_prompts(chunk), num_tokens, kk if mode != "ar" else 0, temperature, seed,
                             freq_penalty, row_offset=s, mode=mode, teacher=teacher, readout=readout, tau=tau,
                             warn=lambda _: None)
    for i, (p, row, n) in enumerate(zip(chunk, res.tokens, res.lengths)):
      rec = {"index": s + i, "prompt": p, "completion": model.tokenizer.decode(row[:n]), "num_tokens": int(n),
             "k": int(kk), "mode": mode, "readout": readout, "seed": seed}
      if res.teacher_passes is not None:
        rec["teacher_passes"] = int(res.teacher_passes[i])
      if res.accepted is not None:
        rec["accepted"] = int(res.accepted[i])
      records.append(rec)
  text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  if out:
    files.write_text(out, text)
  else:
    sys.stdout.write(text)
  return records


def define_flags() -> None:
  """Defines this tool's flags (called by `run`, so the tools' library functions can be imported together)."""
  flags.DEFINE_string("workdir", None, "run directory with checkpoints/ and tokenizer/")
  flags.DEFINE_multi_string("prompt", [], "a prompt (repeatable)")
  flags.DEFINE_string("prompt_file", None, "UTF-8 text file, one prompt per non-blank line")
  flags.DEFINE_enum("mode", None, ["ar", "pflm", "verify", "speculative"],
                    "decoder (default: pflm for a push-forward model, ar for an AR one or --k 0)")
  flags.DEFINE_integer("k", None, "tokens per step (default: the model's k_max; 0 = AR sampling)")
  flags.DEFINE_integer("num_tokens", 64, "new tokens per prompt")
  flags.DEFINE_float("temperature", 1.0, "softmax temperature (AR; the teacher in verify/speculative)")
  flags.DEFINE_float("tau", 1.0, "the push-forward noise encoder's tau (pflm mode)")
  flags.DEFINE_enum("readout", None, ["argmax", "sample"], "push-forward readout (default: as trained)")
  flags.DEFINE_integer("seed", 0, "noise seed")
  flags.DEFINE_float("freq_penalty", 0.0, "push-forward frequency penalty (0 = off)")
  flags.DEFINE_string("verify_with", None, "AR teacher workdir: lossless draft-and-verify mode")
  flags.DEFINE_string("speculative_with", None, "AR teacher workdir: exact speculative sampling")
  flags.DEFINE_integer("batch_size", 16, "prompts per decoder call")
  flags.DEFINE_string("out", None, "output JSONL (default: stdout); never overwritten")


def main(argv):
  del argv
  f = flags.FLAGS
  prompts, names = read_prompts(f.prompt, f.prompt_file)
  sample_to_jsonl(f.workdir, prompts, f.num_tokens, f.k, f.temperature, f.seed, f.freq_penalty, f.verify_with,
                  f.batch_size, f.out, names=names, mode=f.mode, speculative_with=f.speculative_with,
                  readout=f.readout, tau=f.tau)

def run(argv=None):
  define_flags()
  cli.run(main, argv, required=["workdir"])


if __name__ == "__main__":
  run()
