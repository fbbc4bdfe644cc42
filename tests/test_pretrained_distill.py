"""Distilling a converted pretrained teacher: data.tokenizer="teacher" and the smollm2_k4 config, end to end on the
tiny llama fixture (tests/fixtures/hf_llama, its 64-id BPE) standing in for SmolLM2."""
import importlib.util
import os

import numpy as np
import pytest

import pretrained_helpers as ph
from kforcing_jax import pretrained
from kforcing_jax import workdir as workdir_lib
from kforcing_jax.data import corpora, pipeline, tokenizers
from kforcing_jax.training import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smollm2_config(arg):
  spec = importlib.util.spec_from_file_location("smollm2_k4", os.path.join(REPO, "experiments", "configs",
                                                                             "smollm2_k4.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  root = tmp_path_factory.mktemp("pretrained")
  src = ph.hf_dir(root, "llama", {"eos_token": {"content": "<|im_end|>"}, "add_bos_token": False})
  wd = str(root / "teacher")
  pretrained.convert_hf_dir(src, wd, max_len=32)
  # Lower-case KJV verses: text the tiny BPE covers (its alphabet is a-z, digits, space, ".,\n").
  lines = []
  for _, text in corpora.kjv_documents():
    lines.extend(line.lower() for line in text.splitlines())
    if len(lines) > 300:
      break
  (root / "kjv.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
  return wd, root


def student_config(teacher_dir, root, **kw):
  """smollm2_k4's recipe with the tiny teacher's architecture and a tiny corpus."""
  c = smollm2_config("k=1,runlocal")
  _, meta = workdir_lib.read_meta(teacher_dir)
  c.model.update({f: meta["model"][f] for f in workdir_lib.ARCH_FIELDS}, max_len=32)
  c.data.update(name="local_text", files=str(root / "kjv.txt"), documents="line", validation_fraction=0.1,
                data_dir=str(root / "tfds"), num_threads=0)
  c.teacher_workdir = teacher_dir
  c.seq_len, c.batch_size, c.num_steps, c.checkpoint_every, c.eval_every = 16, 4, 3, 3, 0
  c.num_devices, c.progress_bar = 1, False  # one device, no eval step: one compile per stage keeps this fast
  for key, value in kw.items():
    c[key] = value
  return c


def test_smollm2_config_distills_a_pretrained_teacher_with_its_tokenizer(teacher, tmp_path):
  t_dir, root = teacher
  t_tok = tokenizers.load_tokenizer(t_dir)
  assert t_tok.kind == "pretrained" and t_tok.bos_id == -1
  k1 = str(tmp_path / "k1")
  cfg = student_config(t_dir, root)
  assert cfg.data.tokenizer == "teacher" and cfg.target_teacher == "ar" and cfg.loss == "kl"
  final = train.train_and_evaluate(cfg, k1)
  assert final["step"] == 3 and np.isfinite(final["train/loss"])
  _, s_meta = workdir_lib.read_meta(k1)
  _, t_meta = workdir_lib.read_meta(t_dir)
  assert s_meta["tokenizer"] == t_meta["tokenizer"] == t_tok.spec
  workdir_lib.check_same_tokenizer(s_meta["tokenizer"], t_meta["tokenizer"], "student", "teacher")
  # The corpus was read with the teacher's ids: the cached tokens are its encoding of the documents.
  tokens, starts = pipeline.token_cache(cfg.data, t_tok, "train")
  src = corpora.text_source(cfg.data, "train")
  assert list(tokens[starts[0]:starts[1]]) == t_tok.encode(src[0])


def test_a_tokenizer_kind_other_than_the_teachers_is_refused(teacher, tmp_path):
  t_dir, root = teacher
  cfg = student_config(t_dir, root)
  cfg.data.tokenizer = "bpe"
  with pytest.raises(tokenizers.TokenizerError, match="has a 'pretrained' tokenizer.*data.tokenizer=teacher"):
    train.prepare(cfg, str(tmp_path / "s"))
  assert not os.path.exists(tmp_path / "s" / "tokenizer")


def test_teacher_tokenizer_needs_a_source_workdir(teacher, tmp_path):
  _, root = teacher
  cfg = student_config(teacher[0], root)
  cfg.stage, cfg.teacher_workdir = "ar", ""
  with pytest.raises(tokenizers.TokenizerError, match="teacher_workdir.*init_workdir.*neither"):
    train.prepare(cfg, str(tmp_path / "ar"))
