"""gen-PPL of generated text under an external judge LM (the paper judges with GPT-2 Large).

The samples come as token ids of the generating model's tokenizer. When the judge reads the same ids (same
tokenizer spec) they are scored as they are; otherwise prompt and prompt + continuation are decoded to text and
re-encoded with the judge's tokenizer, and the judge scores the tokens after the longest common prefix of the two
encodings (the continuation, plus any token that straddles the prompt boundary). gen-PPL is exp(mean NLL) per
judge token, pooled over all samples; sequences longer than the judge's max_len are cut at the end.
"""
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from kforcing_jax import workdir as workdir_lib
from kforcing_jax.models.config import ModelConfig
from kforcing_jax.models.transformer import KForcingLM


def same_ids(a_spec: dict, b_spec: dict) -> bool:
  """Whether two tokenizer specs give the same token ids (no re-tokenization needed)."""
  return all(a_spec.get(k) == b_spec.get(k) for k in workdir_lib.TOKENIZER_KEYS)


def _strip_bos(ids, tokenizer):
  ids = [int(i) for i in ids]
  return ids[1:] if ids and tokenizer.bos_id >= 0 and ids[0] == tokenizer.bos_id else ids


def judge_sequences(judge_tokenizer, tokenizer, prompt_ids: Sequence[Sequence[int]],
                    gen_BxN) -> list[tuple[list[int], int]]:
  """Each sample in the judge's ids, with the index of its first scored token.

  Args:
    judge_tokenizer: the judge's tokenizer.
    tokenizer: the samples' tokenizer.
    prompt_ids: each sample's prompt (bos included if the tokenizer has one), in `tokenizer`'s ids.
    gen_BxN: generated ids [B, N] in `tokenizer`'s ids.
  Returns:
    [(judge ids, first scored index >= 1)] per sample.
  """
  gen = [[int(x) for x in row] for row in np.asarray(gen_BxN)]
  if same_ids(judge_tokenizer.spec, tokenizer.spec):
    return [(list(map(int, p)) + g, max(1, len(p))) for p, g in zip(prompt_ids, gen)]
  bos = [judge_tokenizer.bos_id] if judge_tokenizer.bos_id >= 0 else []
  out = []
  for p, g in zip(prompt_ids, gen):
    p = _strip_bos(p, tokenizer)
    p_text, full_text = tokenizer.decode(p), tokenizer.decode(p + g)
    if not full_text.startswith(p_text):  # a character split over the boundary: keep the two parts apart
      full_text = p_text + tokenizer.decode(g)
    p_ids, ids = bos + judge_tokenizer.encode(p_text), bos + judge_tokenizer.encode(full_text)
    start = 0
    while start < min(len(p_ids), len(ids)) and p_ids[start] == ids[start]:
      start += 1
    out.append((ids, max(1, start)))
  return out


@functools.lru_cache(maxsize=8)
def _nll_fn(cfg: ModelConfig):
  model = KForcingLM(cfg)

  def run(params, seq_BxL):
    logp = jax.nn.log_softmax(model.apply({"params": params}, seq_BxL[:, :-1]).astype(jnp.float32), -1)
    return -jnp.take_along_axis(logp, seq_BxL[:, 1:, None], -1)[..., 0]
  return jax.jit(run)


def score(judge, tokenizer, prompt_ids: Sequence[Sequence[int]], gen_BxN, batch_size: int = 16) -> dict:
  """gen-PPL of the samples' continuations under `judge`.

  Args:
    judge: a restored AR model (`kforcing_jax.load`).
    tokenizer: the samples' tokenizer.
    prompt_ids: each sample's prompt in `tokenizer`'s ids (bos included if it has one).
    gen_BxN: generated ids [B, N].
    batch_size: sequences per judge forward.
  Returns:
    {"judge_gen_ppl", "judge_tokens" (scored judge tokens), "judge_retokenized" (bool)}.
  Raises:
    ValueError: the judge is a push-forward model, or no token is left to score.
  """
  if judge.config.is_pflm:
    raise ValueError(f"the judge {judge.workdir} holds a push-forward model; give an AR model")
  seqs = [(ids[: judge.config.max_len], start) for ids, start in
          judge_sequences(judge.tokenizer, tokenizer, prompt_ids, gen_BxN)]
  seqs = [(ids, start) for ids, start in seqs if start < len(ids)]
  if not seqs:
    raise ValueError(f"no generated token fits the judge's max_len={judge.config.max_len} after its prompt")
  width = max(len(ids) for ids, _ in seqs)
  fn, total, count = _nll_fn(judge.config), 0.0, 0
  for b in range(0, len(seqs), batch_size):
    chunk = seqs[b:b + batch_size]
    tok = np.full((batch_size, width), max(judge.tokenizer.pad_id, 0), np.int32)  # causal: padding after is inert
    for i, (ids, _) in enumerate(chunk):
      tok[i, :len(ids)] = ids
    nll = np.asarray(fn(judge.params, jnp.asarray(tok)))
    for i, (ids, start) in enumerate(chunk):
      total += float(nll[i, start - 1:len(ids) - 1].sum())
      count += len(ids) - start
  return {"judge_gen_ppl": math.exp(total / count), "judge_tokens": count,
          "judge_retokenized": not same_ids(judge.tokenizer.spec, tokenizer.spec)}
