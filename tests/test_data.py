"""Corpora (tfds array_record builders), token caches and the grain pipeline."""
import os

import grain
import numpy as np
import pytest
import tensorflow_datasets as tfds

from kforcing_jax.data import corpora, pipeline
from kforcing_jax.data import tokenizers as T
from kforcing_jax.data.corpora import DataError
from kforcing_jax import workdir as checkpoint

_BYTES = T.BytesTokenizer(vocab_multiple=8)


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def local_cfg(tmp_path_factory, tfds_dir):
  """40 small distinct documents, one per file."""
  docs = tmp_path_factory.mktemp("docs")
  for i in range(40):
    (docs / f"doc{i:02d}.txt").write_text(f"Document {i}: " + " ".join(f"w{i}x{j}" for j in range(5 + i)) + "\n")
  cfg = corpora.default_data_config()
  cfg.update(dict(name="local_text", files=str(docs), data_dir=tfds_dir, tokenizer="bytes", vocab_multiple=8,
                  validation_fraction=0.2))
  return cfg


def _kjv_cfg(tfds_dir):
  cfg = corpora.default_data_config()
  cfg.update(dict(data_dir=tfds_dir, tokenizer="bytes", vocab_multiple=8))
  return cfg


def _ds(cfg, **kw):
  kw = dict(dict(seq_len=16, batch_size=8, split="train", seed=0, shard_index=0, shard_count=1), **kw)
  return pipeline.make_dataset(cfg, _BYTES, **kw)


def _rows(batch):
  return [tuple(r) for r in batch["tokens"]]


# --- corpora ---------------------------------------------------------------------------------------------------

def test_kjv_prepare_is_complete_and_idempotent(tfds_dir):
  cfg = _kjv_cfg(tfds_dir)
  builder = corpora.prepare(cfg)
  train, val = corpora.text_source(cfg, "train"), corpora.text_source(cfg, "validation")
  assert len(train) + len(val) == 1189  # chapters of the KJV
  assert 0 < len(val) < 0.05 * 1189
  assert all(isinstance(val[i], str) and val[i] for i in range(len(val)))
  files = sorted(os.listdir(builder.data_dir))
  mtimes = [os.stat(os.path.join(builder.data_dir, f)).st_mtime_ns for f in files]
  again = corpora.prepare(cfg)
  assert again.data_dir == builder.data_dir
  assert sorted(os.listdir(builder.data_dir)) == files
  assert [os.stat(os.path.join(builder.data_dir, f)).st_mtime_ns for f in files] == mtimes
  texts = corpora.held_out_texts(cfg, 3)
  assert texts == [val[i] for i in range(3)]


def test_code_corpus_is_capped(tfds_dir):
  cfg = corpora.default_data_config()
  cfg.update(dict(name="code", data_dir=tfds_dir, max_bytes=100_000))
  train, val = corpora.text_source(cfg, "train"), corpora.text_source(cfg, "validation")
  texts = [train[i] for i in range(len(train))] + [val[i] for i in range(len(val))]
  assert len(val) >= 1
  size = sum(len(t.encode("utf-8")) for t in texts)
  assert 100_000 <= size < 100_000 + max(len(t.encode("utf-8")) for t in texts)


def test_local_text_splits_cover_every_document(local_cfg):
  train, val = corpora.text_source(local_cfg, "train"), corpora.text_source(local_cfg, "validation")
  got = sorted([train[i] for i in range(len(train))] + [val[i] for i in range(len(val))])
  files = corpora.resolve_files(local_cfg.files)
  assert got == sorted(open(f, encoding="utf-8").read() for f in files)
  assert len(val) >= 1 and len(train) >= 1


def test_local_text_line_documents(tmp_path, tfds_dir):
  (tmp_path / "a.txt").write_text("first line\n\nsecond line\nthird\n")
  (tmp_path / "b.txt").write_text("fourth\n")
  cfg = corpora.default_data_config()
  cfg.update(dict(name="local_text", files=str(tmp_path / "*.txt"), documents="line", data_dir=tfds_dir))
  train, val = corpora.text_source(cfg, "train"), corpora.text_source(cfg, "validation")
  got = sorted([train[i] for i in range(len(train))] + [val[i] for i in range(len(val))])
  assert got == ["first line", "fourth", "second line", "third"]


def test_local_text_changed_files_prepare_anew(tmp_path, tfds_dir):
  (tmp_path / "a.txt").write_text("one\n")
  (tmp_path / "b.txt").write_text("two\n")
  cfg = corpora.default_data_config()
  cfg.update(dict(name="local_text", files=str(tmp_path), data_dir=tfds_dir))
  first = corpora.prepare(cfg).data_dir
  (tmp_path / "c.txt").write_text("three\n")
  assert corpora.prepare(cfg).data_dir != first


@pytest.mark.parametrize("content, message", [(b"", "empty file"), (b"  \n", "empty file"),
                                              (b"caf\xe9 latin-1", "not UTF-8 text")])
def test_local_text_bad_file(tmp_path, tfds_dir, content, message):
  (tmp_path / "good.txt").write_text("fine text\n")
  (tmp_path / "bad.txt").write_bytes(content)
  cfg = corpora.default_data_config()
  cfg.update(dict(name="local_text", files=str(tmp_path), data_dir=tfds_dir))
  with pytest.raises(DataError, match=f"bad.txt: {message}"):
    corpora.prepare(cfg)


def test_local_text_needs_two_documents(tmp_path, tfds_dir):
  (tmp_path / "a.txt").write_text("a single document\n")
  cfg = corpora.default_data_config()
  cfg.update(dict(name="local_text", files=str(tmp_path / "a.txt"), data_dir=tfds_dir))
  with pytest.raises(DataError, match="has 1 document"):
    corpora.prepare(cfg)
  cfg.documents = "line"
  with pytest.raises(DataError, match="has 1 document"):
    corpora.prepare(cfg)


@pytest.mark.parametrize("field, value, message", [
    ("name", "wikipedia", "data.name='wikipedia' is not one of kjv, code, local_text, lm1b"),
    ("tokenizer", "spm", "data.tokenizer='spm' is not one of"),
    ("packing", "ragged", "data.packing='ragged' is not one of pack, pad"),
    ("validation_fraction", 0.0, "must lie in"),
    ("files", "/nonexistent/*.txt", "matches no files"),
])
def test_bad_config(tfds_dir, field, value, message):
  cfg = corpora.default_data_config()
  cfg.update({"data_dir": tfds_dir, "name": "local_text" if field == "files" else "kjv", field: value})
  with pytest.raises(DataError, match=message):
    corpora.prepare(cfg)


def test_lm1b_with_mock_data(tmp_path):
  cfg = corpora.default_data_config()
  cfg.update(dict(name="lm1b", data_dir=str(tmp_path), tokenizer="bytes", packing="pad"))
  with tfds.testing.mock_data(num_examples=6):
    src = corpora.text_source(cfg, "validation")  # lm1b's "test" split
    assert len(src) == 6 and all(isinstance(src[i], str) for i in range(6))
    batches = list(_ds(cfg, batch_size=4, split="train", num_epochs=1))
  assert len(batches) == 2 and sum(b["loss_mask"][:, 0].sum() for b in batches) == 6


def test_lm1b_prepare_failure_is_one_clear_error(tmp_path, monkeypatch):
  def no_tf(self, *args, **kwargs):
    raise ModuleNotFoundError("No module named 'tensorflow'")
  monkeypatch.setattr(tfds.builder_cls("lm1b"), "download_and_prepare", no_tf)
  cfg = corpora.default_data_config()
  cfg.update(dict(name="lm1b", data_dir=str(tmp_path)))
  with pytest.raises(DataError, match="preparing lm1b failed .*tensorflow.*needs network and TensorFlow once"):
    corpora.prepare(cfg)


# --- pipeline --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("packing", ["pack", "pad"])
def test_shapes_and_dtypes(local_cfg, packing):
  cfg = local_cfg.copy_and_resolve_references()
  cfg.packing = packing
  batch = next(iter(_ds(cfg, batch_size=8, shard_count=2, shard_index=1)))
  assert batch["tokens"].shape == batch["loss_mask"].shape == (4, 16)
  assert batch["tokens"].dtype == np.int32 and batch["loss_mask"].dtype == np.float32
  assert (batch["tokens"] >= 0).all() and (batch["tokens"] < _BYTES.vocab_size).all()


def test_pack_windows_are_the_token_stream(local_cfg):
  tokens, starts = pipeline.token_cache(local_cfg, _BYTES, "train")
  assert (tokens[starts[:-1]] == _BYTES.bos_id).all()
  batches = list(_ds(local_cfg, split="train", shuffle=False, num_epochs=1))
  stream = np.concatenate([b["tokens"][b["loss_mask"][:, 0] > 0].reshape(-1) for b in batches])
  n = len(tokens) // 16 * 16
  np.testing.assert_array_equal(stream, tokens[:n])
  assert (batches[-1]["loss_mask"].sum(1) % 16 == 0).all()


def test_pad_mode_masks_padding(local_cfg):
  cfg = local_cfg.copy_and_resolve_references()
  cfg.packing = "pad"
  val = corpora.text_source(cfg, "validation")
  lengths = sorted(len(_BYTES.encode(val[i])) for i in range(len(val)))
  seq_len = lengths[0] + 5  # the shortest document fits with bos, eos and padding; the longest is truncated
  assert lengths[-1] + 2 > seq_len
  batches = list(_ds(cfg, split="validation", seq_len=seq_len, num_epochs=1))
  rows = [(t, m) for b in batches for t, m in zip(b["tokens"], b["loss_mask"]) if m[0] > 0]
  assert len(rows) == len(val)
  for (tok, mask), i in zip(rows, range(len(val))):
    want = ([_BYTES.bos_id] + _BYTES.encode(val[i]) + [_BYTES.eos_id])[:seq_len]
    n = len(want)
    assert mask[:n].all() and not mask[n:].any()
    assert list(tok[:n]) == want and (tok[n:] == _BYTES.pad_id).all()


def test_shards_are_disjoint_and_match_the_global_batch(local_cfg):
  full = iter(_ds(local_cfg, batch_size=8, shard_count=1))
  shards = [iter(_ds(local_cfg, batch_size=8, shard_count=4, shard_index=s)) for s in range(4)]
  for _ in range(5):
    global_rows = _rows(next(full))
    parts = [_rows(next(it)) for it in shards]
    assert sorted(sum(parts, [])) == sorted(global_rows)
    for a in range(4):
      for b in range(a + 1, 4):
        assert not set(parts[a]) & set(parts[b])


def test_validation_covers_each_example_once(local_cfg):
  cfg = local_cfg.copy_and_resolve_references()
  cfg.packing = "pad"
  rows = [r for s in range(2) for b in _ds(cfg, split="validation", batch_size=4, shard_count=2, shard_index=s,
                                          num_epochs=1) for r, m in zip(_rows(b), b["loss_mask"]) if m[0] > 0]
  assert len(rows) == len(set(rows)) == len(corpora.text_source(cfg, "validation"))


def test_epochs_reshuffle(local_cfg):
  cfg = local_cfg.copy_and_resolve_references()
  cfg.packing = "pad"
  n = len(corpora.text_source(cfg, "train"))
  rows = [r for b in _ds(cfg, batch_size=1, num_epochs=2) for r in _rows(b)]
  first, second = rows[:n], rows[n:]
  assert sorted(first) == sorted(second) and len(set(first)) == n
  assert first != second
  assert rows == [r for b in _ds(cfg, batch_size=1, num_epochs=2) for r in _rows(b)]  # same seed, same order
  assert rows != [r for b in _ds(cfg, batch_size=1, num_epochs=2, seed=1) for r in _rows(b)]


def test_iterator_state_round_trip(local_cfg):
  it = iter(_ds(local_cfg))
  for _ in range(7):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(3)]
  fresh = iter(_ds(local_cfg))
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    np.testing.assert_array_equal(got["tokens"], want["tokens"])


def test_iterator_state_in_orbax_checkpoint(local_cfg, tmp_path):
  it = iter(_ds(local_cfg))
  for _ in range(3):
    next(it)
  w = checkpoint.Writer(str(tmp_path), async_save=False)
  w.save(3, {"w": np.zeros(2, np.float32)}, {"step": 3}, data_state=grain.checkpoint.CheckpointSave(it))
  w.close()
  want = next(it)
  fresh = iter(_ds(local_cfg))
  checkpoint.restore(str(tmp_path), data_state=grain.checkpoint.CheckpointRestore(fresh), items=("meta", "data"))
  np.testing.assert_array_equal(next(fresh)["tokens"], want["tokens"])


def test_token_cache_is_keyed_by_tokenizer(local_cfg, tmp_path):
  bpe = T.train_bpe([f"w{i}x{j} " for i in range(40) for j in range(40)], vocab_size=300, vocab_multiple=8)
  a, _ = pipeline.token_cache(local_cfg, _BYTES, "train")
  b, _ = pipeline.token_cache(local_cfg, bpe, "train")
  assert len(b) < len(a) and b[0] == bpe.bos_id
  np.testing.assert_array_equal(pipeline.token_cache(local_cfg, _BYTES, "train")[0], a)


@pytest.mark.parametrize("kw, message", [
    (dict(batch_size=6, shard_count=4), "not divisible"),
    (dict(shard_index=2, shard_count=2), "outside 0..1"),
    (dict(seq_len=0), "seq_len=0"),
    (dict(split="test"), "split='test'"),
    (dict(num_epochs=0), "num_epochs=0"),
    (dict(seq_len=1_000_000), "fewer than one row"),
])
def test_make_dataset_bad_input(local_cfg, kw, message):
  with pytest.raises(DataError, match=message):
    _ds(local_cfg, **kw)


def test_partial_and_unknown_config(local_cfg):
  cfg = corpora.resolve_data_config({"name": "code", "data_dir": None})
  assert cfg.tokenizer == "bpe" and cfg.data_dir is None
  with pytest.raises(DataError, match="unknown data config key.*vocab_sz"):
    corpora.resolve_data_config({"vocab_sz": 10})
