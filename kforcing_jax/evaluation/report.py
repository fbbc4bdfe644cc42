"""One evaluation of a student against its teacher on the held-out split (the JSON of `kforcing_jax.evaluate`).

Samples: the teacher's AR samples (sorted inverse CDF), the student's push-forward samples without and with the
frequency penalty, and verify-mode samples (which must equal the teacher's: reported as `matches_teacher`), all
from the same held-out prompts and the same seed. Fixed length (no EOS truncation) so every sample has the same
number of scored tokens.
"""
from typing import Optional, Sequence

import jax.numpy as jnp
import ml_collections
import numpy as np

from kforcing_jax import workdir
from kforcing_jax import decoding
from kforcing_jax.decoding import common
from kforcing_jax.evaluation import judge as judge_lib
from kforcing_jax.evaluation import metrics

# The reference's recommended penalties for LM1B (docs/method.md §3), by K.
DEFAULT_PENALTY = {1: 0.0, 2: 0.2, 3: 0.4, 4: 0.5}


def held_out_tokens(model, n_docs: int = 64, texts: Optional[Sequence[str]] = None) -> list[list[int]]:
  """Held-out documents as token lists (bos prepended), from the model's data config (or given texts)."""
  if texts is None:
    from kforcing_jax.data.corpora import held_out_texts
    data_cfg = ml_collections.ConfigDict(model.meta["config"]["data"])
    texts = held_out_texts(data_cfg, n_docs)
  if not texts:
    raise ValueError("no held-out texts to evaluate on")
  bos = [model.tokenizer.bos_id] if model.tokenizer.bos_id >= 0 else []
  return [bos + model.tokenizer.encode(t) for t in texts]


def _chunks(docs, length: int, count: int) -> np.ndarray:
  stream = np.concatenate([np.asarray(d, np.int32) for d in docs])
  count = min(count, len(stream) // length)
  if count < 1:
    raise ValueError(f"held-out split has {len(stream)} tokens, fewer than one {length}-token sequence")
  return stream[: count * length].reshape(count, length)


def evaluate(student, teacher, *, k: Optional[int] = None, num_samples: int = 16, prompt_len: int = 6,
             num_tokens: Optional[int] = None, freq_penalty: Optional[float] = None, seed: int = 0,
             agreement_seqs: int = 8, agreement_len: int = 64, texts: Optional[Sequence[str]] = None,
             readout: Optional[str] = None, warn=None, judge=None) -> dict:
  """Fidelity + quality of `student` (a LoadedModel) against `teacher` (a LoadedModel, AR).

  Args:
    student, teacher: restored models with the same tokenizer.
    k: slots / tokens per step (default: the student's k_max).
    num_samples: samples per decoder.
    prompt_len: prompt tokens (bos included) taken from held-out text.
    num_tokens: new tokens per sample (default: the student's training seq_len - prompt_len, at most max_len).
    freq_penalty: penalty for the "student_penalty" line (default: the reference's value for K).
    seed: noise seed shared by every decoder.
    agreement_seqs, agreement_len: held-out sequences for slot agreement.
    texts: held-out texts (default: the student's data config's validation split).
    readout: the student's readout, "argmax" | "sample" (default: the checkpoint's, meta "readout").
    warn: called with one line when a sampled readout is asked of an argmax-trained student.
    judge: another restored AR model; each sample line then also has its gen-PPL under it (`judge.score`,
      re-tokenized when its tokenizer differs).
  Returns:
    A JSON-able dict (see the module docstring).
  """
  if not student.config.is_pflm:
    raise ValueError(f"{student.workdir} holds an AR model; evaluate a push-forward student against its teacher")
  workdir.check_same_tokenizer(student.tokenizer.spec, teacher.tokenizer.spec, f"student ({student.workdir})",
                               f"teacher ({teacher.workdir})")
  s_cfg, t_cfg = student.config, teacher.config
  if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0:
    raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
  if isinstance(prompt_len, bool) or not isinstance(prompt_len, int) or prompt_len < 1:
    raise ValueError(f"prompt_len must be an integer >= 1 (bos included), got {prompt_len!r}")
  _, k, readout = decoding.resolve(s_cfg, "verify", k, t_cfg, readout, student.meta.get("readout") or "argmax", warn)
  seq_len = int(student.meta.get("config", {}).get("seq_len", s_cfg.max_len))
  if num_tokens is None:
    num_tokens = max(1, min(seq_len, s_cfg.max_len) - prompt_len)
  sc = decoding.check_scalars(num_tokens, seed, 1.0, 1.0, DEFAULT_PENALTY.get(k, 0.5) if freq_penalty is None
                              else freq_penalty)
  num_tokens, lam, seed = sc["num_tokens"], sc["freq_penalty"], sc["seed"]
  common.check_request(s_cfg, [prompt_len], num_tokens)
  common.check_request(t_cfg, [prompt_len], num_tokens)
  docs = held_out_tokens(student, max(64, num_samples), texts)
  agreement_len = min(agreement_len, seq_len, s_cfg.max_len)
  seqs = _chunks(docs, agreement_len, agreement_seqs)
  slot, prefix = metrics.slot_agreement(s_cfg, student.params, t_cfg, teacher.params, seqs, k, seed)
  fidelity = metrics.slot_fidelity(s_cfg, student.params, t_cfg, teacher.params, seqs, k, readout, seed)

  prompts = [list(map(int, r)) for r in _chunks(docs, prompt_len, num_samples)]
  tok, plen = common.pad_prompts(prompts)
  tok, plen = jnp.asarray(tok), jnp.asarray(plen)

  def run(mode, freq_penalty=0.0):
    # The AR line is the teacher's own sample; every other line decodes with the student.
    cfg, params = (t_cfg, teacher.params) if mode == "ar" else (s_cfg, student.params)
    fn = decoding.make(mode, cfg, num_tokens, k=k, teacher_cfg=t_cfg, readout=readout, penalize=bool(freq_penalty))
    return fn(params, tok, plen, seed=seed, freq_penalty=freq_penalty, teacher_params=teacher.params)

  t_gen = run("ar").tokens
  s_gen = run("pflm").tokens
  p_gen = run("pflm", lam).tokens
  ver = run("verify")
  v_gen, passes = ver.tokens, ver.teacher_passes
  spec = run("speculative")
  n_out = float(np.asarray(v_gen).size)
  out = {"k": k, "readout": readout, "num_samples": len(prompts), "num_tokens": num_tokens, "prompt_len": prompt_len,
         "freq_penalty": lam, "seed": seed, **fidelity, "slot_agreement": slot, "prefix_agreement": prefix,
         "verify": {"tokens_per_pass": n_out / float(np.sum(np.asarray(passes))),
                    "matches_teacher": float(np.mean(np.asarray(v_gen) == np.asarray(t_gen)))},
         "speculative": {"tokens_per_pass": n_out / float(np.sum(np.asarray(spec.teacher_passes))),
                         "draft_acceptance": float(np.sum(np.asarray(spec.accepted))) /
                                             (k * float(np.sum(np.asarray(spec.teacher_passes))))}}
  for name, gen in (("teacher", t_gen), ("student", s_gen), ("student_penalty", p_gen)):
    out[name] = metrics.sample_metrics(t_cfg, teacher.params, prompts, gen)
    if judge is not None:
      out[name].update(judge_lib.score(judge, student.tokenizer, prompts, gen))
  out["examples"] = {name: student.tokenizer.decode([int(x) for x in np.asarray(gen)[0]])
                     for name, gen in (("prompt", tok[:1, :prompt_len]), ("teacher", t_gen), ("student", s_gen),
                                       ("student_penalty", p_gen))}
  return out
