"""A reference PyTorch checkpoint -> a new workdir (`python -m kforcing_jax.convert`); the key mapping itself is
`kforcing_jax.models.torch_import`, the run-directory layout `kforcing_jax.workdir`.

Every workdir written here loads with `kforcing_jax.load`: a tokenizer that fits the vocabulary is required (named
with --tokenizer, or guessed from a known vocabulary size), and the mask id must be the tokenizer's.
"""
import os
import re
from typing import Optional

from kforcing_jax import workdir as workdir_lib
from kforcing_jax.models import torch_import
from kforcing_jax.models.torch_import import ConversionError
from kforcing_jax.models.params import check_params

# The reference's tokenizers (utils/tokenizer.py) and sequence lengths: LM1B uses bert-base-uncased ([MASK] = 103
# inside its 30522 ids, 128 tokens); OWT uses gpt2, which has no mask token, so id 50257 is appended (50258, 1024).
KNOWN_TOKENIZERS = {
    "bert": {"vocab_size": 30522, "mask_index": 103, "max_len": 128},
    "gpt2": {"vocab_size": 50258, "mask_index": 50257, "max_len": 1024},
}


def _build_tokenizer(name: str):
  from kforcing_jax.data import tokenizers  # pylint: disable=g-import-not-at-top  (keeps the mapping light)
  # vocab_multiple=1: the reference's embeddings are unpadded (30522 / 50258 rows).
  try:
    if name == "gpt2":
      return tokenizers.gpt2_tokenizer(vocab_multiple=1)
    return tokenizers.bert_tokenizer("" if name == "bert" else name, vocab_multiple=1)
  except ValueError as e:  # TokenizerError
    raise ConversionError(f"tokenizer {name!r}: {e}") from e


def resolve_tokenizer(name: Optional[str], vocab_size: int):
  """The tokenizer for `--tokenizer` (bert | gpt2 | a BERT vocab.txt), or a guess from the vocabulary size.

  Args:
    name: "bert", "gpt2", a vocab.txt path, or None (guess: 30522 -> bert, 50258 -> gpt2).
    vocab_size: the checkpoint's vocabulary.
  Returns:
    (tokenizer, defaults {"mask_index", "max_len"} for the model config).
  Raises:
    ConversionError: unknown name, no tokenizer to guess or build, or a vocabulary that differs from the
      checkpoint's (a workdir without a fitting tokenizer could not be loaded, so none is written).
  """
  if name is None:
    guess = [k for k, s in KNOWN_TOKENIZERS.items() if s["vocab_size"] == vocab_size]
    if not guess:
      raise ConversionError(
          f"cannot name a tokenizer for a {vocab_size}-id vocabulary; give --tokenizer bert|gpt2|PATH/vocab.txt "
          "(a workdir without one cannot be loaded)")
    try:
      name, tok = guess[0], _build_tokenizer(guess[0])
    except ConversionError as e:
      raise ConversionError(f"the {vocab_size}-id vocabulary looks like {guess[0]}, but {e}; give "
                            "--tokenizer PATH/vocab.txt") from None
  elif name in KNOWN_TOKENIZERS or os.path.isfile(name):
    tok = _build_tokenizer(name)
  else:
    raise ConversionError(f"unknown tokenizer {name!r}: expected bert, gpt2 or an existing BERT vocab.txt")
  if tok.vocab_size != vocab_size:
    raise ConversionError(f"tokenizer {name!r} has {tok.vocab_size} ids (mask included) but the checkpoint's "
                          f"vocabulary is {vocab_size}")
  max_len = KNOWN_TOKENIZERS.get(tok.kind, {}).get("max_len", 1024)
  return tok, {"mask_index": tok.mask_index, "max_len": max_len}


def convert(reference_ckpt: str, kind: str, workdir: str, *, tokenizer: Optional[str] = None, k_max: int = 4,
            max_len: Optional[int] = None, mask_index: Optional[int] = None,
            ignore_keys: Optional[str] = None) -> dict:
  """Converts a reference checkpoint into a new workdir: orbax checkpoint at step 0 (params + meta) + tokenizer/.

  Args:
    reference_ckpt: the reference's .ckpt (or an .npz state dict).
    kind: "ar" or "pflm".
    workdir: output directory; must not exist or be empty (nothing is ever overwritten).
    tokenizer: "bert", "gpt2", a BERT vocab.txt, or None (guessed from the vocabulary size; see `resolve_tokenizer`).
    k_max: largest K for a push-forward LM.
    max_len: longest sequence (default: the tokenizer's training length, 128 bert / 1024 gpt2, else 1024).
    mask_index: the mask id; must equal the tokenizer's (default: the tokenizer's).
    ignore_keys: a regex; prefix-stripped keys that fully match it are dropped (and listed in meta["ignored_keys"])
      instead of being an error, e.g. a teacher copy stored beside the model. Default: every key must be used.
  Returns:
    The checkpoint's meta dict.
  Raises:
    ConversionError: any bad input, with one line naming it.
  """
  if kind not in torch_import.KINDS:
    raise ConversionError(f"unknown kind {kind!r}; expected one of {torch_import.KINDS}")
  if os.path.exists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
    raise ConversionError(f"workdir {workdir} exists and is not empty; refusing to overwrite it")
  sd = torch_import.load_state_dict(reference_ckpt)
  ignored = []
  if ignore_keys:
    try:
      pattern = re.compile(ignore_keys)
    except re.error as e:
      raise ConversionError(f"invalid ignore_keys regex {ignore_keys!r}: {e}") from e
    ignored = sorted(k for k in sd if pattern.fullmatch(k))
    sd = {k: v for k, v in sd.items() if k not in set(ignored)}
  if "vocab_embed.embedding" not in sd:
    raise ConversionError("missing key 'vocab_embed.embedding': cannot infer the vocabulary")
  vocab = int(sd["vocab_embed.embedding"].shape[0])
  tok, defaults = resolve_tokenizer(tokenizer, vocab)
  mask_index = defaults["mask_index"] if mask_index is None else mask_index
  max_len = defaults["max_len"] if max_len is None else max_len
  if mask_index != tok.mask_index:
    raise ConversionError(f"--mask_index={mask_index} differs from the tokenizer's mask id {tok.mask_index}")
  cfg = torch_import.infer_config(sd, kind, k_max=k_max, mask_index=mask_index, max_len=max_len)
  params = torch_import.from_reference_state_dict(sd, cfg)
  try:
    check_params(cfg, params)
  except ValueError as e:  # a mapping bug rather than a bad file; still one line
    raise ConversionError(f"converted params do not fit the model: {e}") from e
  meta = {"model": cfg.to_dict(), "tokenizer": tok.spec, "source": os.path.abspath(reference_ckpt),
          "kind": kind, "stage": kind, "k": cfg.k_max, "step": 0, "ignored_keys": ignored}
  try:
    workdir_lib.write_new(workdir, params, meta, tok)
  except workdir_lib.BadInputError as e:
    raise ConversionError(str(e)) from None
  return meta
