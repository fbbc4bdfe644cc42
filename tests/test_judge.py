"""gen-PPL under an external judge (`evaluation/judge.py`, `evaluate --judge_workdir`) on tiny models."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kforcing_jax
import pretrained_helpers as ph
from kforcing_jax import pretrained
from kforcing_jax.data import pretrained_tokenizer
from kforcing_jax.data.tokenizers import BytesTokenizer
from kforcing_jax.evaluation import judge, metrics
from kforcing_jax.models import KForcingLM
from workdir_helpers import make_workdir


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  root = tmp_path_factory.mktemp("judge")
  pretrained.convert_hf_dir(ph.hf_dir(root, "llama"), str(root / "bpe"))
  return (kforcing_jax.load(make_workdir(root / "s", 4, 0)), kforcing_jax.load(make_workdir(root / "t", 0, 3)),
          kforcing_jax.load(make_workdir(root / "o", 0, 5, tokenizer=BytesTokenizer(vocab_multiple=64))),
          kforcing_jax.load(str(root / "bpe")))


def _direct_ppl(model, prompt_ids, cont_ids):
  logp = jax.nn.log_softmax(KForcingLM(model.config).apply({"params": model.params},
                                                           jnp.asarray([prompt_ids + cont_ids]))[0], -1)
  return [-float(logp[len(prompt_ids) - 1 + j, c]) for j, c in enumerate(cont_ids)]


def test_same_tokenizer_judge_is_the_teacher_gen_ppl(models):
  _, t, _, _ = models
  prompts, gen = [[256, 70, 71], [256, 72, 73]], np.array([[5, 6, 7, 9], [8, 9, 10, 11]])
  got = judge.score(t, t.tokenizer, prompts, gen, batch_size=1)
  want = metrics.sample_metrics(t.config, t.params, prompts, gen)["gen_ppl"]
  assert not got["judge_retokenized"] and got["judge_tokens"] == 8
  assert got["judge_gen_ppl"] == pytest.approx(want, rel=1e-5)


def test_retokenized_text_scores_as_the_judges_own_ids(models):
  # Samples written in bytes ids, judged by the 64-id BPE model: the same as scoring the BPE encoding directly.
  t, bpe = models[1], models[3]
  prompt, cont = "the cat", " is in the garden, 42 times."
  b_prompt, b_gen = [256] + t.tokenizer.encode(prompt), [t.tokenizer.encode(cont)]
  got = judge.score(bpe, t.tokenizer, [b_prompt], b_gen)
  p_ids, c_ids = bpe.tokenizer.encode(prompt), bpe.tokenizer.encode(cont)
  assert p_ids + c_ids == bpe.tokenizer.encode(prompt + cont)  # the boundary is a word boundary
  nll = _direct_ppl(bpe, p_ids, c_ids)
  assert got["judge_retokenized"] and got["judge_tokens"] == len(c_ids)
  assert got["judge_gen_ppl"] == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)
  # And the other way round (BPE samples judged by a bytes model): bytes of the decoded text, bos prepended.
  o = models[2]
  back = judge.score(o, bpe.tokenizer, [p_ids], [c_ids])
  o_p, o_c = [256] + o.tokenizer.encode(prompt), o.tokenizer.encode(cont)
  assert back["judge_tokens"] == len(o_c)
  assert back["judge_gen_ppl"] == pytest.approx(math.exp(np.mean(_direct_ppl(o, o_p, o_c))), rel=1e-5)


def test_a_token_straddling_the_prompt_boundary_is_scored():
  tok = pretrained_tokenizer.PretrainedTokenizer(ph.tiny_tokenizer(), -1, 2, 2, 64)
  bytes_tok = BytesTokenizer()
  # Prompt "a th", continuation "e cat": the judge's "Ġthe" spans the cut, so scoring starts at it.
  (ids, start), = judge.judge_sequences(tok, bytes_tok, [[256] + bytes_tok.encode("a th")],
                                        [bytes_tok.encode("e cat")])
  assert tok.decode(ids) == "a the cat" and start == 1 and tok.decode(ids[start:]) == " the cat"


def test_cli_checks(models):
  # report.evaluate(..., judge=) itself: tests/test_evaluation.py::test_report (one evaluation run is enough).
  s, t, _, bpe = models
  from kforcing_jax import evaluate  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="holds a push-forward model"):
    evaluate.check_request(s.workdir, t.workdir, k=2, judge_workdir=s.workdir)
  with pytest.raises(ValueError, match="push-forward"):
    judge.score(s, t.tokenizer, [[256, 70]], np.array([[5, 6]]))
  evaluate.check_request(s.workdir, t.workdir, k=2, judge_workdir=bpe.workdir)
