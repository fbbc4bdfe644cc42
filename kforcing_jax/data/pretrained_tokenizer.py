"""The tokenizer of an imported pretrained model (kind "pretrained"): a HF `tokenizers.Tokenizer` with its ids.

Built from a Hugging Face folder's tokenizer.json (+ tokenizer_config.json for the special tokens and the chat
template), or rebuilt from a GGUF file's `tokenizer.ggml.*` metadata as a byte-level BPE. Saved like every other
tokenizer (WORKDIR/tokenizer/tokenizer.json + spec.json); the spec carries the special ids and the chat template.

`bos_id` is the id prepended to prompts and documents: the model's bos only when its tokenizer adds one (Llama),
else -1 (GPT-2 style BPEs such as SmolLM2's add nothing). `vocab_size` is the model's embedding size, which may
exceed the tokenizer's ids (padded rows, e.g. Qwen2); a tokenizer with more ids than the model is an error.
"""
import json
import os
from typing import Mapping, Optional, Sequence

import tokenizers as hf

from kforcing_jax.data.tokenizers import Tokenizer, TokenizerError

KIND = "pretrained"
# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) whose split rule we restate exactly: gpt2's regex, or a
# digit-by-digit split followed by it (llama.cpp groups these; SmolLM2's HF tokenizer.json is Digits + ByteLevel).
_GPT2_PRE = ("default", "gpt2")
_DIGITS_PRE = ("smollm", "starcoder", "refact", "codeshell", "exaone", "minerva")
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


class PretrainedTokenizer(Tokenizer):
  """An imported model's tokenizer; `chat_template` (a Jinja string, "" if none) and `apply_chat_template`."""
  kind = KIND

  def __init__(self, tok: hf.Tokenizer, bos_id: int, eos_id: int, pad_id: int, vocab_size: int,
               chat_template: str = ""):
    raw = tok.get_vocab_size(with_added_tokens=True)
    if raw > vocab_size:
      raise TokenizerError(f"the tokenizer has {raw} ids but the model's vocabulary is {vocab_size}")
    for name, i in (("bos", bos_id), ("eos", eos_id), ("pad", pad_id)):
      if not -1 <= i < raw:
        raise TokenizerError(f"{name} id {i} is outside the tokenizer's {raw} ids")
    self._tok = tok
    self.chat_template = chat_template or ""
    super().__init__(raw, bos_id, eos_id, pad_id, -1, 1, extra={"chat_template": self.chat_template})
    self.vocab_size = int(vocab_size)  # the model's rows; ids >= raw are never produced and dropped by decode

  def _encode_batch(self, texts):
    return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

  def _decode(self, ids):
    return self._tok.decode(ids, skip_special_tokens=False)

  def _serialized(self):
    return self._tok.to_str()

  def token(self, i: int) -> Optional[str]:
    """The string of id i (None outside the vocabulary)."""
    return self._tok.id_to_token(int(i))

  def apply_chat_template(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
    """Renders a conversation with the model's chat template (needs `jinja2`), ready for `generate`.

    Args:
      messages: [{"role": "system" | "user" | "assistant", "content": str}, ...].
      add_generation_prompt: end with the template's assistant header so the model answers.
    Returns:
      The prompt text (special tokens written out; `encode` maps them to their ids).
    Raises:
      TokenizerError: no chat template, or jinja2 missing.
    """
    if not self.chat_template:
      raise TokenizerError("this tokenizer has no chat template")
    try:
      from jinja2.sandbox import ImmutableSandboxedEnvironment  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise TokenizerError("applying a chat template needs jinja2 (`pip install jinja2`)") from None

    def raise_exception(msg):
      raise TokenizerError(f"chat template: {msg}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)  # as transformers renders them
    special = lambda i: (self.token(i) or "") if i >= 0 else ""
    return env.from_string(self.chat_template).render(
        messages=list(messages), add_generation_prompt=add_generation_prompt, raise_exception=raise_exception,
        bos_token=special(self.bos_id), eos_token=special(self.eos_id))


def restore(tok: hf.Tokenizer, spec: dict) -> PretrainedTokenizer:
  """The tokenizer saved with `spec` (spec.json) and `tok` (tokenizer.json)."""
  return PretrainedTokenizer(tok, int(spec["bos_id"]), int(spec["eos_id"]), int(spec["pad_id"]),
                             int(spec["vocab_size"]), spec.get("chat_template", ""))


# ---- Hugging Face folder ---------------------------------------------------------------------------------------

def _token_content(value) -> Optional[str]:
  if isinstance(value, dict):  # AddedToken serialized by transformers
    return value.get("content")
  return value if isinstance(value, str) else None


def _chat_template(tok_cfg: dict, hf_dir: str) -> str:
  tpl = tok_cfg.get("chat_template") or ""
  if isinstance(tpl, list):  # named templates: [{"name": "default", "template": ...}, ...]
    tpl = next((t.get("template", "") for t in tpl if t.get("name") == "default"), "")
  path = os.path.join(hf_dir, "chat_template.jinja")
  if not tpl and os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      tpl = f.read()
  return tpl


def _added_bos(tok: hf.Tokenizer) -> int:
  # The id the tokenizer's own post-processor puts in front (Llama's <s>), found by asking it rather than parsing
  # the several post-processor layouts; -1 when it adds nothing in front.
  plain = tok.encode("a", add_special_tokens=False).ids
  full = tok.encode("a", add_special_tokens=True).ids
  return full[0] if len(full) > len(plain) and full[1:1 + len(plain)] == plain else -1


def from_hf_dir(hf_dir: str, vocab_size: int, tokenizer_json: Optional[str] = None,
                hf_config: Optional[dict] = None) -> PretrainedTokenizer:
  """The tokenizer of a Hugging Face model folder.

  Args:
    hf_dir: the folder (tokenizer.json, optionally tokenizer_config.json / chat_template.jinja).
    vocab_size: the model's vocabulary (embedding rows).
    tokenizer_json: another tokenizer.json to use instead of the folder's.
    hf_config: the folder's config.json (a fallback for eos_token_id).
  Returns:
    The tokenizer.
  Raises:
    TokenizerError: no or unreadable tokenizer.json, a special token it lacks, or more ids than the model has.
  """
  path = tokenizer_json or os.path.join(hf_dir, "tokenizer.json")
  if not os.path.isfile(path):
    raise TokenizerError(f"no tokenizer.json in {hf_dir}; give --tokenizer PATH/tokenizer.json")
  try:
    tok = hf.Tokenizer.from_file(path)
  except Exception as e:  # HF raises plain Exceptions for unreadable files
    raise TokenizerError(f"{path}: unreadable tokenizer ({' '.join(str(e).split())[:120]})") from None
  cfg_path = os.path.join(os.path.dirname(path), "tokenizer_config.json")
  tok_cfg = json.load(open(cfg_path, encoding="utf-8")) if os.path.isfile(cfg_path) else {}

  def token_id(field):
    content = _token_content(tok_cfg.get(field))
    if content is None:
      return None
    i = tok.token_to_id(content)
    if i is None:
      raise TokenizerError(f"{cfg_path}: {field} {content!r} is not in {path}")
    return i

  bos = _added_bos(tok)
  if tok_cfg.get("add_bos_token") is True and token_id("bos_token") is not None:
    bos = token_id("bos_token")
  elif tok_cfg.get("add_bos_token") is False:
    bos = -1
  eos = token_id("eos_token")
  if eos is None:
    cfg_eos = (hf_config or {}).get("eos_token_id")
    eos = int(cfg_eos[0] if isinstance(cfg_eos, list) else cfg_eos) if cfg_eos is not None else -1
  pad = token_id("pad_token")
  pad = pad if pad is not None else (eos if eos >= 0 else 0)
  return PretrainedTokenizer(tok, bos, eos, pad, vocab_size, _chat_template(tok_cfg, hf_dir))


# ---- GGUF metadata ---------------------------------------------------------------------------------------------

def _pre_tokenizer(pre: str):
  byte_level = hf.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in _GPT2_PRE:
    return byte_level
  if pre in _DIGITS_PRE:
    return hf.pre_tokenizers.Sequence([hf.pre_tokenizers.Digits(individual_digits=True), byte_level])
  raise TokenizerError(f"unsupported tokenizer.ggml.pre {pre!r} (supported: {', '.join(_GPT2_PRE + _DIGITS_PRE)}); "
                       "give --tokenizer PATH/tokenizer.json")


def from_gguf(meta: Mapping, vocab_size: int) -> PretrainedTokenizer:
  """Rebuilds a GGUF file's tokenizer (`tokenizer.ggml.model` "gpt2": byte-level BPE) as a HF tokenizer.

  Args:
    meta: `gguf_import.tokenizer_metadata` (tokens, token_type, merges, pre, bos/eos/pad ids, add_bos,
      chat_template).
    vocab_size: the model's vocabulary (must equal the number of tokens).
  Returns:
    The tokenizer; control tokens are special (never split), user-defined tokens are added tokens.
  Raises:
    TokenizerError: another tokenizer model or pre-tokenizer, or a vocabulary that does not fit the model.
  """
  if meta.get("model") != "gpt2":
    raise TokenizerError(f"unsupported tokenizer.ggml.model {meta.get('model')!r} (only 'gpt2', byte-level BPE); "
                         "give --tokenizer PATH/tokenizer.json")
  tokens, types = list(meta["tokens"]), list(meta.get("token_type") or [1] * len(meta["tokens"]))
  if len(tokens) != vocab_size:
    raise TokenizerError(f"tokenizer.ggml.tokens has {len(tokens)} tokens but the model's vocabulary is {vocab_size}")
  vocab = {t: i for i, t in enumerate(tokens)}
  if len(vocab) != len(tokens):
    raise TokenizerError("tokenizer.ggml.tokens has duplicate tokens")
  merges = [tuple(m.split(" ", 1)) for m in meta.get("merges") or []]
  bad = next((m for m in merges if len(m) != 2 or m[0] not in vocab or m[1] not in vocab), None)
  if bad is not None:
    raise TokenizerError(f"tokenizer.ggml.merges has a merge {' '.join(bad)!r} of unknown tokens")
  tok = hf.Tokenizer(hf.models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
  tok.pre_tokenizer = _pre_tokenizer(meta.get("pre") or "default")
  tok.decoder = hf.decoders.ByteLevel()
  tok.add_special_tokens([hf.AddedToken(t, special=True, normalized=False)
                          for t, ty in zip(tokens, types) if ty == _CONTROL])
  tok.add_tokens([hf.AddedToken(t, special=False, normalized=False)
                  for t, ty in zip(tokens, types) if ty == _USER_DEFINED])
  get = lambda k: -1 if meta.get(k) is None else int(meta[k])
  eos = get("eos_id")
  pad = get("pad_id") if get("pad_id") >= 0 else max(eos, 0)
  bos = get("bos_id") if meta.get("add_bos") else -1
  return PretrainedTokenizer(tok, bos, eos, pad, vocab_size, meta.get("chat_template") or "")
