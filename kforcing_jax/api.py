"""`kforcing_jax.load(workdir)`: a restored checkpoint (config, params, tokenizer) that can `.generate` text.

    import kforcing_jax
    model = kforcing_jax.load(WORKDIR)
    model.generate(["In the beginning"], num_tokens=64, k=4)

K semantics of `generate`: k=None decodes with the model's own k_max (push-forward) or AR for a teacher; k=0
forces AR sampling (inverse CDF) through any model's AR path; verify_with=TEACHER runs the lossless mode (the
output is the teacher's AR sample for the same seed). `temperature` is the softmax temperature for AR and verify,
and the tau fed to the noise encoder for push-forward decoding.
"""
import dataclasses
from typing import Optional, Sequence, Union

import jax.numpy as jnp
import numpy as np

from kforcing_jax import workdir as workdir_lib
from kforcing_jax.decoding import ar, common, pflm, verify
from kforcing_jax.models.config import ModelConfig


@dataclasses.dataclass
class Generation:
  """Token-level result of `LoadedModel.generate_ids`."""
  tokens: np.ndarray            # int32 [B, num_tokens], pad after the first EOS
  lengths: np.ndarray           # int32 [B], tokens before the first EOS
  teacher_passes: Optional[np.ndarray] = None   # verify mode: teacher forwards per row


@dataclasses.dataclass
class LoadedModel:
  """A restored model. Attributes: config (ModelConfig), params (inner dict), tokenizer, meta, step, workdir."""
  config: ModelConfig
  params: dict
  tokenizer: object
  meta: dict
  step: int
  workdir: str

  @property
  def k_max(self) -> int:
    return self.config.k_max

  def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, with the tokenizer's bos prepended (as in training documents)."""
    if isinstance(prompts, str):
      raise ValueError("prompts must be a list of strings, not one string")
    out = []
    for p in prompts:
      if not isinstance(p, str) or not p:
        raise ValueError(f"empty prompt (or not a string): {p!r}")
      bos = [self.tokenizer.bos_id] if self.tokenizer.bos_id >= 0 else []
      out.append(bos + self.tokenizer.encode(p))
    return out

  def generate_ids(self, prompt_ids: Sequence[Sequence[int]], num_tokens: int, k: Optional[int] = None,
                   temperature: float = 1.0, seed: int = 0, freq_penalty: float = 0.0,
                   verify_with: Union[None, str, "LoadedModel"] = None, row_offset: int = 0) -> Generation:
    """Decodes a batch of token-id prompts (one jitted call); see `generate` for the arguments.

    Returns:
      A `Generation` (tokens padded after EOS, lengths, teacher passes in verify mode).
    """
    teacher = _as_model(verify_with) if verify_with is not None else None
    k = self._resolve_k(k, teacher)
    lens = [len(p) for p in prompt_ids]
    common.check_request(self.config, lens, num_tokens, k or None, temperature, freq_penalty)
    tok, plen = common.pad_prompts(prompt_ids, self.tokenizer.pad_id)
    tok, plen = jnp.asarray(tok), jnp.asarray(plen)
    passes = None
    if teacher is not None:
      check_pair(self, teacher)
      common.check_request(teacher.config, lens, num_tokens, None, temperature)
      if freq_penalty:
        raise ValueError("freq_penalty is not defined in verify mode (the output is the teacher's sample)")
      fn = verify.decoder(self.config, teacher.config, k, num_tokens)
      out, passes = fn(self.params, teacher.params, tok, plen, seed, float(temperature), row_offset)
      passes = np.asarray(passes)
    elif k == 0:
      if freq_penalty:
        raise ValueError("freq_penalty applies to push-forward decoding only (k >= 1), not to AR sampling")
      out = ar.decoder(self.config, num_tokens)(self.params, tok, plen, seed, float(temperature), row_offset)
    else:
      fn = pflm.decoder(self.config, k, num_tokens, bool(freq_penalty))
      out = fn(self.params, tok, plen, seed, float(temperature), float(freq_penalty), row_offset)
    out, length = common.truncate_at_eos(out, self.tokenizer.eos_id, self.tokenizer.pad_id)
    return Generation(np.asarray(out), np.asarray(length), passes)

  def generate(self, prompts: Sequence[str], num_tokens: int, k: Optional[int] = None, temperature: float = 1.0,
               seed: int = 0, freq_penalty: float = 0.0, verify_with: Union[None, str, "LoadedModel"] = None,
               row_offset: int = 0) -> list[str]:
    """Continues each prompt by num_tokens tokens (cut at the first EOS) and returns the new text.

    Args:
      prompts: non-empty strings (bos is prepended).
      num_tokens: new tokens per prompt (prompt + num_tokens <= max_len).
      k: tokens per step; None = the model's k_max (AR for a teacher), 0 = AR sampling.
      temperature: > 0; AR/verify softmax temperature, push-forward noise-encoder tau.
      seed: noise seed; u of the token at position j of prompt i depends only on (seed, row_offset + i, j).
      freq_penalty: push-forward frequency penalty (0 = off).
      verify_with: a teacher workdir or `LoadedModel` for the lossless mode (this model drafts K tokens).
      row_offset: global index of the first prompt (keeps noise stable when a prompt file is split in batches).
    Returns:
      One string per prompt.
    Raises:
      ValueError: on any bad input (see `common.check_request`).
    """
    res = self.generate_ids(self.encode_prompts(prompts), num_tokens, k, temperature, seed, freq_penalty,
                            verify_with, row_offset)
    return [self.tokenizer.decode(row[:n]) for row, n in zip(res.tokens, res.lengths)]

  def _resolve_k(self, k, teacher) -> int:
    if k is None:
      return self.config.k_max
    k = int(k)
    if k == 0 and teacher is not None:
      raise ValueError("verify mode needs K >= 1 drafts per teacher pass")
    if k < 0 or k > self.config.k_max:
      raise ValueError(f"K={k} outside 1..{self.config.k_max} (k=0 means AR; the model was trained for "
                       f"k={self.config.k_max})")
    return k


def _as_model(m) -> LoadedModel:
  return m if isinstance(m, LoadedModel) else load(m)


def check_pair(student: LoadedModel, teacher: LoadedModel) -> None:
  """Raises ValueError unless `student` is a push-forward model that drafts in `teacher`'s token ids."""
  if not student.config.is_pflm:
    raise ValueError(f"{student.workdir} holds an AR model; verify / speculative decoding needs a push-forward "
                     "student (k_max >= 1) to draft")
  workdir_lib.check_same_tokenizer(student.tokenizer.spec, teacher.tokenizer.spec, f"student ({student.workdir})",
                                   f"teacher ({teacher.workdir})")


def load(workdir: str, step: Optional[int] = None) -> LoadedModel:
  """Restores the newest readable checkpoint of a workdir: params, model config and tokenizer.

  Args:
    workdir: a run directory written by the trainer (checkpoints/ and tokenizer/).
    step: a specific step (default: the newest readable one).
  Returns:
    A `LoadedModel`.
  Raises:
    ValueError: no good checkpoint, no or mismatching tokenizer, params not matching the config
      (`workdir.BadInputError`).
  """
  s, cfg, params, tok, meta = workdir_lib.load_model(workdir, step)
  return LoadedModel(cfg, params, tok, meta, s, str(workdir))
