"""Metrics, the evaluation report and the `load(...).generate` API on tiny saved workdirs."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kforcing_jax
from kforcing_jax.data.tokenizers import BytesTokenizer
from kforcing_jax.decoding import common
from kforcing_jax.distill import inverse_cdf
from kforcing_jax.evaluation import metrics, report
from kforcing_jax.models import KForcingLM
from workdir_helpers import TEXTS, make_workdir


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval")
  return (kforcing_jax.load(make_workdir(root / "s", 4, 0)), kforcing_jax.load(make_workdir(root / "t", 0, 3)),
          kforcing_jax.load(make_workdir(root / "o", 0, 5, tokenizer=BytesTokenizer(vocab_multiple=64))))


def test_entropy_and_distinct():
  assert metrics.unigram_entropy([[1, 1, 2, 2], [3, 3, 3, 3]]) == pytest.approx(math.log(2) / 2)
  assert metrics.distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)
  assert metrics.distinct_n([[1, 2, 3, 4]], 3) == 1.0


def test_teacher_nll_matches_unpadded_forward(models):
  _, t, _ = models
  prompts, gen = [[256, 70, 71], [256, 72]], np.array([[5, 6, 7], [8, 9, 10]])
  nll = metrics.teacher_nll(t.config, t.params, prompts, gen)
  model = KForcingLM(t.config)
  for i, p in enumerate(prompts):
    seq = jnp.asarray([p + list(gen[i])])
    logp = jax.nn.log_softmax(model.apply({"params": t.params}, seq)[0], -1)
    want = [-float(logp[len(p) - 1 + j, gen[i, j]]) for j in range(3)]
    np.testing.assert_allclose(nll[i], want, rtol=1e-5, atol=1e-5)


def test_slot_agreement_slot1_is_inverse_cdf_agreement(models):
  s, t, _ = models
  seqs = np.stack([np.asarray([256] + t.tokenizer.encode(x)[:23]) for x in TEXTS[:3]])
  k, w = 3, seqs.shape[1] - 3
  slot, prefix = metrics.slot_agreement(s.config, s.params, t.config, t.params, seqs, k, seed=1, windows=w)
  assert all(0 <= p <= a <= 1 for p, a in zip(prefix, slot)) and prefix == sorted(prefix, reverse=True)
  # Slot 1 directly: student hint 1 at window t vs the teacher's inverse-CDF token from a full forward.
  u = common.position_noise(1, 3, seqs.shape[1] + k + 1)
  noise = u[:, jnp.arange(w)[:, None] + 1 + jnp.arange(k)[None, :]]
  sm, tm = KForcingLM(s.config), KForcingLM(t.config)
  y = jnp.argmax(sm.apply({"params": s.params}, jnp.asarray(seqs[:, :w]), noise, jnp.ones((3,)),
                          method=sm.staircase)[:, :, 0], -1)
  z = inverse_cdf.sample(tm.apply({"params": t.params}, jnp.asarray(seqs))[:, :w], u[:, 1:w + 1])
  assert slot[0] == pytest.approx(float(jnp.mean(y == z)))


def test_report(models):
  s, t, o = models
  out = report.evaluate(s, t, k=2, num_samples=3, prompt_len=4, num_tokens=10, seed=0, agreement_seqs=2,
                        agreement_len=24, texts=TEXTS, judge=o)  # o: an external judge with another tokenizer
  assert out["verify"]["matches_teacher"] == 1.0
  assert 1.0 <= out["verify"]["tokens_per_pass"] <= 3.0
  for name in ("teacher", "student", "student_penalty"):
    assert set(out[name]) == {"gen_ppl", "entropy", "distinct_2", "distinct_3", "judge_gen_ppl", "judge_tokens",
                              "judge_retokenized"} and out[name]["gen_ppl"] > 1
    assert out[name]["judge_retokenized"] and out[name]["judge_gen_ppl"] > 1 and out[name]["judge_tokens"] > 0
  assert len(out["slot_agreement"]) == 2


def test_generate_api(models):
  s, t, other = models
  prompts = ["In the", "And God said"]
  assert len(s.generate(prompts, num_tokens=8)) == 2
  a = t.generate(prompts, num_tokens=8, seed=3)
  assert s.generate(prompts, num_tokens=8, k=2, seed=3, verify_with=t) == a
  # A prompt's noise does not depend on its batch.
  assert t.generate(prompts[1:], num_tokens=8, seed=3, row_offset=1) == a[1:]
  bad = [dict(k=5), dict(temperature=0.0), dict(temperature=float("nan")), dict(num_tokens=70),
         dict(prompts=[""]), dict(prompts=[]), dict(verify_with=other), dict(k=0, verify_with=t)]
  for b in bad:
    kw = {"prompts": prompts, "num_tokens": 8, **b}
    with pytest.raises(ValueError):
      s.generate(**kw)
  with pytest.raises(ValueError):
    kforcing_jax.load("/nonexistent/workdir")


def test_benchmark_report_and_plot(models, tmp_path):
  from kforcing_jax.evaluation import benchmark
  s, t, _ = models
  rep = benchmark.run(s.config, s.params, [2], (1, 4), ar_samplers=("vocab_cdf", "greedy"),
                      ar_model=(t.config, t.params), teacher=(t.config, t.params), num_tokens=8, prompt_len=3,
                      repeats=1, progress=False)
  row = rep["results"]["2"]
  assert set(row) == {"ar_vocab_cdf", "ar_greedy", "k1", "k4", "verify_k4", "speculative_k4"}
  assert all(r["tokens_per_s"] > 0 and r["prefill_s"] > 0 for r in row.values())
  for m in ("verify_k4", "speculative_k4"):  # one teacher pass emits 1..K+1 tokens
    assert 1.0 <= row[m]["tokens_per_pass"] <= 5.0
  assert rep["speedup"]["2"]["ar_vocab_cdf"] == 1.0
  benchmark.plot_speedup(rep, str(tmp_path / "s.png"))
  assert (tmp_path / "s.png").exists() and "| k4 |" in benchmark.markdown_table(rep)
