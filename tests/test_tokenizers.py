"""Tokenizers: round trips, GPT-2 ids, save/load, spec checks, bad input."""
import json

import hypothesis
import hypothesis.strategies as st
import pytest

from kforcing_jax.data import corpora
from kforcing_jax.data import tokenizers as T

_CORPUS = [
    "In the beginning God created the heaven and the earth.\nAnd the earth was without form, and void.",
    "def add(a, b):\n  return a + b  # naïve, but fine: ünïcödé and 日本語 text too\n",
    "The quick brown fox jumps over the lazy dog. " * 20,
]
_BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "the", "##s", "cat", ",", "."]


@pytest.fixture(scope="module")
def bpe():
  return T.train_bpe(_CORPUS * 5, vocab_size=300, vocab_multiple=8)


@pytest.fixture(scope="module")
def gpt2():
  return T.gpt2_tokenizer()


@pytest.fixture
def bert_vocab(tmp_path):
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(_BERT_VOCAB) + "\n")
  return str(path)


_texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(text=_texts)
def test_bytes_round_trip(text):
  tok = T.BytesTokenizer()
  ids = tok.encode(text)
  assert ids == list(text.encode("utf-8"))
  assert tok.decode(ids) == text
  assert tok.decode([tok.bos_id] + ids + [tok.vocab_size - 1]) == text  # specials and padding ids are dropped


@hypothesis.settings(max_examples=50, deadline=None)
@hypothesis.given(text=_texts)
def test_bpe_round_trip(bpe, text):
  ids = bpe.encode(text)
  assert all(0 <= i < bpe.raw_vocab_size for i in ids)
  assert bpe.decode(ids) == text


def test_bpe_compresses_and_pads_vocab(bpe):
  text = _CORPUS[0]
  assert len(bpe.encode(text)) < 0.8 * len(text.encode("utf-8"))
  assert bpe.vocab_size % 8 == 0 and bpe.raw_vocab_size <= bpe.vocab_size < bpe.raw_vocab_size + 8
  assert bpe.bos_id == bpe.eos_id == bpe.pad_id == bpe.encode(T.EOT)[0]
  assert bpe.mask_index == -1


def test_bpe_training_is_deterministic(bpe):
  # Every host of a multi-host run trains its own copy; they must agree.
  assert T.train_bpe(_CORPUS * 5, vocab_size=300, vocab_multiple=8).spec == bpe.spec


def test_gpt2_ids(gpt2):
  assert gpt2.encode("Hello world") == [15496, 995]
  assert gpt2.encode(" the<|endoftext|>") == [262, 50256]
  assert (gpt2.bos_id, gpt2.eos_id, gpt2.mask_index, gpt2.raw_vocab_size) == (50256, 50256, 50257, 50258)
  assert gpt2.vocab_size == 50304  # 50258 padded to a multiple of 128
  assert T.gpt2_tokenizer(vocab_multiple=1).vocab_size == 50258  # the reference's V
  assert gpt2.decode([15496, 995, 50257, 50300]) == "Hello world"


def test_bert_from_vocab_file(bert_vocab):
  tok = T.bert_tokenizer(bert_vocab, vocab_multiple=8)
  ids = tok.encode("Hello, cats!")
  assert ids == [5, 10, 9, 8, 1]  # lowercased, "cats" = cat + ##s, "!" unknown
  assert (tok.bos_id, tok.eos_id, tok.pad_id, tok.mask_index) == (2, 3, 0, 4)
  assert tok.vocab_size == 16 and tok.raw_vocab_size == len(_BERT_VOCAB)
  assert tok.decode([2] + tok.encode("hello world the cats") + [3]) == "hello world the cats"


@pytest.mark.parametrize("kind", ["bytes", "bpe", "gpt2", "bert"])
def test_save_load_identical_ids(kind, tmp_path, bpe, gpt2, bert_vocab):
  tok = {"bytes": T.BytesTokenizer(), "bpe": bpe, "gpt2": gpt2, "bert": T.bert_tokenizer(bert_vocab)}[kind]
  tok.save(str(tmp_path))
  back = T.load_tokenizer(str(tmp_path))
  assert back.spec == tok.spec
  for text in _CORPUS + ["hello world, the cat."]:
    assert back.encode(text) == tok.encode(text)
  tok.save(str(tmp_path))  # saving the same tokenizer again is a no-op


def test_save_refuses_to_replace_a_different_tokenizer(tmp_path, bpe):
  bpe.save(str(tmp_path))
  with pytest.raises(T.TokenizerError, match="kind"):
    T.BytesTokenizer().save(str(tmp_path))
  assert T.load_tokenizer(str(tmp_path)).spec == bpe.spec


def test_load_checks_expected_spec(tmp_path):
  T.BytesTokenizer().save(str(tmp_path))
  spec = T.BytesTokenizer().spec
  T.load_tokenizer(str(tmp_path), expected_spec=spec)
  with pytest.raises(T.TokenizerError, match="vocab_size is 384 but 4096"):
    T.load_tokenizer(str(tmp_path), expected_spec=dict(spec, vocab_size=4096))


def test_load_detects_tampered_files(tmp_path, bpe):
  bpe.save(str(tmp_path))
  spec_file = tmp_path / "tokenizer" / "spec.json"
  spec_file.write_text(json.dumps(dict(json.loads(spec_file.read_text()), vocab_size=512)))
  with pytest.raises(T.TokenizerError, match="vocab_size"):
    T.load_tokenizer(str(tmp_path))


def test_load_missing_or_corrupt(tmp_path, bpe):
  with pytest.raises(T.TokenizerError, match="no tokenizer"):
    T.load_tokenizer(str(tmp_path))
  bpe.save(str(tmp_path))
  (tmp_path / "tokenizer" / "tokenizer.json").write_text("{not json")
  with pytest.raises(T.TokenizerError, match="unreadable"):
    T.load_tokenizer(str(tmp_path))


def _local_cfg(tmp_path, **kw):
  docs = tmp_path / "docs"
  docs.mkdir(exist_ok=True)
  for i, text in enumerate(_CORPUS * 3):
    (docs / f"{i}.txt").write_text(text)
  cfg = corpora.default_data_config()
  cfg.update(dict(name="local_text", files=str(docs), data_dir=str(tmp_path / "tfds"), vocab_size=300,
                  vocab_multiple=8, **kw))
  return cfg


def test_build_tokenizer_trains_then_reloads(tmp_path):
  cfg = _local_cfg(tmp_path)
  tok = T.build_tokenizer(cfg, str(tmp_path / "wd"))
  assert tok.kind == "bpe" and tok.spec["requested_vocab_size"] == 300
  again = T.build_tokenizer(cfg, str(tmp_path / "wd"))
  assert again.spec == tok.spec
  cfg.tokenizer = "bytes"
  with pytest.raises(T.TokenizerError, match="kind='bpe' but the config asks for 'bytes'"):
    T.build_tokenizer(cfg, str(tmp_path / "wd"))


def test_build_tokenizer_bad_input(tmp_path):
  cfg = corpora.default_data_config()
  cfg.tokenizer = "sentencepiece"
  with pytest.raises(corpora.DataError, match="data.tokenizer='sentencepiece' is not one of"):
    T.build_tokenizer(cfg, None)
  cfg.tokenizer = "bert"
  cfg.vocab_file = str(tmp_path / "missing.txt")
  with pytest.raises(T.TokenizerError, match="does not exist"):
    T.build_tokenizer(cfg, None)
  with pytest.raises(T.TokenizerError, match="vocab_size=100"):
    T.train_bpe(["abc"], vocab_size=100)
