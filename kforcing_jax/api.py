"""`kforcing_jax.load(workdir)`: a restored checkpoint (config, params, tokenizer) that can `.generate` text.

    import kforcing_jax
    model = kforcing_jax.load(WORKDIR)
    model.generate(["In the beginning"], num_tokens=64, k=4)
    model.generate(prompts, 64, k=4, speculative_with=TEACHER)   # exact: the teacher's distribution
    model.generate(prompts, 64, k=4, verify_with=TEACHER)        # lossless: the teacher's sample for this seed

Modes (`kforcing_jax.decoding.dispatch`): mode=None picks "pflm" for a push-forward model (K = k, default its
k_max) and "ar" for an AR model or k=0; `verify_with=T` / `speculative_with=T` (a workdir or a LoadedModel) pick
"verify" / "speculative" with teacher T; `mode=` names one explicitly (then `teacher=` for the two teacher modes).
`temperature` is a softmax temperature (AR sampling; the teacher in verify / speculative mode); `tau` is the
push-forward noise encoder's input (pflm mode only). `readout` ("argmax" | "sample", pflm and verify) defaults to
the checkpoint's trained readout (meta "readout"); speculative decoding always samples from the student's softmax.
"""
import dataclasses
import os
import sys
from typing import Optional, Sequence, Union

import jax.numpy as jnp
import numpy as np

from kforcing_jax import workdir as workdir_lib
from kforcing_jax.decoding import common, dispatch
from kforcing_jax.models.config import ModelConfig


@dataclasses.dataclass
class Generation:
  """Token-level result of `LoadedModel.generate_ids`."""
  tokens: np.ndarray            # int32 [B, num_tokens], pad after the first EOS
  lengths: np.ndarray           # int32 [B], tokens before the first EOS
  teacher_passes: Optional[np.ndarray] = None   # verify / speculative mode: teacher forwards per row
  accepted: Optional[np.ndarray] = None         # speculative mode: accepted drafts per row
  mode: str = ""


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

  @property
  def trained_readout(self) -> str:
    """The readout the model was distilled for (meta "readout"; "argmax" for older or AR checkpoints)."""
    return self.meta.get("readout") or "argmax"

  def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt, with the tokenizer's bos prepended (as in training documents)."""
    return encode(self.tokenizer, prompts)

  def plan(self, num_tokens, k=None, temperature=1.0, seed=0, freq_penalty=0.0, verify_with=None, row_offset=0, *,
           mode: Optional[str] = None, teacher=None, speculative_with=None, readout: Optional[str] = None,
           tau: float = 1.0, warn=lambda line: print(line, file=sys.stderr)):
    """Checks a request (no decoding) and resolves its teacher; `generate` documents the arguments.

    Returns:
      (mode, k, readout, teacher LoadedModel or None, scalars dict).
    """
    scalars = dispatch.check_scalars(num_tokens, seed, temperature, tau, freq_penalty, row_offset)
    named = [(m, t) for m, t in (("verify", verify_with), ("speculative", speculative_with)) if t is not None]
    if len(named) > 1 or (named and mode not in (None, named[0][0])):
      raise ValueError("give one of verify_with / speculative_with, or mode= with teacher=")
    if named:
      mode, teacher = named[0]
    if teacher is not None and mode not in dispatch.TEACHER_MODES:
      raise ValueError(f"a teacher is used by mode verify or speculative, not {mode or 'pflm/ar'}")
    teacher = _as_model(teacher) if teacher is not None else None
    if teacher is not None:
      check_pair(self, teacher)
    mode, k, readout = dispatch.resolve(self.config, mode, k, teacher.config if teacher else None, readout,
                                        self.trained_readout, warn)
    return mode, k, readout, teacher, scalars

  def generate_ids(self, prompt_ids: Sequence[Sequence[int]], num_tokens: int, k: Optional[int] = None,
                   temperature: float = 1.0, seed: int = 0, freq_penalty: float = 0.0,
                   verify_with: Union[None, str, "LoadedModel"] = None, row_offset: int = 0, **kw) -> Generation:
    """Decodes a batch of token-id prompts (one jitted call); see `generate` for the arguments.

    Returns:
      A `Generation` (tokens padded after EOS, lengths, teacher passes / accepted drafts where the mode has them).
    """
    mode, k, readout, teacher, sc = self.plan(num_tokens, k, temperature, seed, freq_penalty, verify_with,
                                              row_offset, **kw)
    lens = [len(p) for p in prompt_ids]
    dispatch.check_lengths(self.config, lens, sc["num_tokens"], teacher.config if teacher else None)
    tok, plen = common.pad_prompts(prompt_ids, self.tokenizer.pad_id)
    fn = dispatch.make(mode, self.config, sc["num_tokens"], k=k, teacher_cfg=teacher.config if teacher else None,
                       readout=readout, penalize=bool(sc["freq_penalty"]))
    res = fn(self.params, jnp.asarray(tok), jnp.asarray(plen), seed=sc["seed"], temperature=sc["temperature"],
             tau=sc["tau"], freq_penalty=sc["freq_penalty"], row_offset=sc["row_offset"],
             teacher_params=teacher.params if teacher else None)
    out, length = common.truncate_at_eos(res.tokens, self.tokenizer.eos_id, self.tokenizer.pad_id)
    return Generation(np.asarray(out), np.asarray(length), res.teacher_passes, res.accepted, mode)

  def generate(self, prompts: Sequence[str], num_tokens: int, k: Optional[int] = None, temperature: float = 1.0,
               seed: int = 0, freq_penalty: float = 0.0, verify_with: Union[None, str, "LoadedModel"] = None,
               row_offset: int = 0, **kw) -> list[str]:
    """Continues each prompt by num_tokens tokens (cut at the first EOS) and returns the new text.

    Args:
      prompts: a list of non-empty strings (bos is prepended).
      num_tokens: new tokens per prompt, an int >= 1 (prompt + num_tokens <= max_len).
      k: tokens per step, an int; None = the model's k_max (AR for a teacher), 0 = AR sampling.
      temperature: > 0; the softmax temperature of AR sampling and of the teacher in verify / speculative mode.
      seed: int noise seed; u of the token at position j of prompt i depends only on (seed, row_offset + i, j).
      freq_penalty: push-forward frequency penalty (0 = off).
      verify_with: a teacher workdir or `LoadedModel` for the lossless mode (this model drafts K tokens).
      row_offset: global index of the first prompt (keeps noise stable when a prompt file is split in batches).
      **kw: keyword-only `mode` ("ar" | "pflm" | "verify" | "speculative"), `teacher` (for mode=),
        `speculative_with` (a teacher: exact speculative sampling), `readout` ("argmax" | "sample"; default the
        checkpoint's), `tau` (> 0, the noise encoder's input in pflm mode), `warn` (called with the one warning
        line a sampled readout of an argmax-trained model gets; default: print to stderr).
    Returns:
      One string per prompt.
    Raises:
      ValueError: on any bad input (a wrong type included), before anything is decoded.
    """
    res = self.generate_ids(self.encode_prompts(prompts), num_tokens, k, temperature, seed, freq_penalty,
                            verify_with, row_offset, **kw)
    return [self.tokenizer.decode(row[:n]) for row, n in zip(res.tokens, res.lengths)]


def encode(tokenizer, prompts: Sequence[str], names: Optional[Sequence[str]] = None) -> list[list[int]]:
  """Token ids of each prompt with the tokenizer's bos prepended; ValueError names a bad prompt (or its `names`)."""
  if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
    raise ValueError(f"prompts must be a list of strings, got {type(prompts).__name__}")
  if not prompts:
    raise ValueError("no prompts given")
  out = []
  for i, p in enumerate(prompts):
    if not isinstance(p, str) or not p:
      raise ValueError(f"{names[i] if names else f'prompt {i}'}: empty or not a string: {p!r}")
    bos = [tokenizer.bos_id] if tokenizer.bos_id >= 0 else []
    out.append(bos + tokenizer.encode(p))
  return out


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
  if not isinstance(workdir, (str, os.PathLike)):
    raise ValueError(f"workdir must be a path, got {type(workdir).__name__}")
  if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
    raise ValueError(f"step must be an integer or None, got {step!r}")
  s, cfg, params, tok, meta = workdir_lib.load_model(workdir, step)
  return LoadedModel(cfg, params, tok, meta, s, str(workdir))
