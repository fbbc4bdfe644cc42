"""One decoder dispatch: `make(mode, ...)` for the API, the evaluation and the benchmark.

Modes:
  "ar"           AR sampling through the model's AR path (inverse CDF of the softmax at `temperature`).
  "pflm"         push-forward decoding, K tokens per step; the noise encoder reads `tau`; readout argmax | sample.
  "verify"       lossless draft-and-verify with shared noise (`verify.py`): the output is the teacher's AR sample.
  "speculative"  exact speculative sampling (`speculative.py`): the student drafts from its hint softmax q (always
                 the sampled readout), the teacher accepts / redraws; the output has the teacher's distribution.

Two different knobs, never one name for both: `temperature` is a softmax temperature (AR sampling and the teacher
in verify / speculative mode); `tau` is the push-forward noise encoder's input (config.tau_range in training). In
verify and speculative mode the student's tau is set to the temperature (its drafts aim at the tempered teacher).
"""
import dataclasses
import math
import numbers
from typing import Callable, Optional, Sequence

import numpy as np

from kforcing_jax.decoding import ar, common, pflm, speculative, verify
from kforcing_jax.models.config import ModelConfig

MODES = ("ar", "pflm", "verify", "speculative")
READOUTS = ("argmax", "sample")
TEACHER_MODES = ("verify", "speculative")


@dataclasses.dataclass
class Decoded:
  """What every decoder returns: tokens [B, N], teacher passes [B] and accepted drafts [B] where the mode has them."""
  tokens: np.ndarray
  teacher_passes: Optional[np.ndarray] = None
  accepted: Optional[np.ndarray] = None


def _integer(name: str, value, minimum: Optional[int] = None) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name} must be an integer, got {value!r}")
  if minimum is not None and int(value) < minimum:
    raise ValueError(f"{name} must be >= {minimum}, got {value}")
  return int(value)


def _real(name: str, value, positive: bool) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value) or math.isinf(value):
    raise ValueError(f"{name} must be a finite number, got {value!r}")
  if positive and not value > 0:
    raise ValueError(f"{name} must be > 0, got {value}")
  if not positive and value < 0:
    raise ValueError(f"{name} must be >= 0, got {value}")
  return float(value)


def check_scalars(num_tokens, seed=0, temperature=1.0, tau=1.0, freq_penalty=0.0, row_offset=0) -> dict:
  """Type and range checks of a request's scalars, before any model is needed.

  Returns:
    The values as Python ints / floats.
  Raises:
    ValueError: naming the argument (a float num_tokens, a string seed, a NaN temperature, ...).
  """
  return dict(num_tokens=_integer("num_tokens", num_tokens, 1), seed=_integer("seed", seed),
              temperature=_real("temperature", temperature, True), tau=_real("tau", tau, True),
              freq_penalty=_real("freq_penalty", freq_penalty, False),
              row_offset=_integer("row_offset", row_offset, 0))


def resolve(cfg: ModelConfig, mode: Optional[str] = None, k=None, teacher_cfg: Optional[ModelConfig] = None,
            readout: Optional[str] = None, trained_readout: str = "argmax", warn: Callable = None):
  """Checks a (mode, K, readout) request against the model(s), once for every caller.

  Args:
    cfg: the decoding model (the student in verify / speculative mode).
    mode: one of MODES; None = "pflm" for a push-forward model (AR when k == 0), "ar" for an AR model.
    k: tokens per step (None: the model's k_max); 0 means AR sampling.
    teacher_cfg: the AR teacher (verify / speculative).
    readout: "argmax" | "sample" (pflm / verify); None = `trained_readout`. Speculative always samples.
    trained_readout: the checkpoint meta's "readout".
    warn: called with one line when a sampled readout is asked of a model trained for argmax.
  Returns:
    (mode, k, readout).
  Raises:
    ValueError: unknown mode / readout, K out of range or not an integer, a missing or non-AR teacher.
  """
  if k is not None:
    k = _integer("k", k, 0)
  if mode is None:
    if not cfg.is_pflm and k:
      raise ValueError(f"K={k} asked of an AR model (k_max=0), which samples one token per step; drop k")
    mode = "ar" if (not cfg.is_pflm or k == 0) else "pflm"
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
  if readout is not None and readout not in READOUTS:
    raise ValueError(f"unknown readout {readout!r}; expected argmax or sample")
  if mode == "ar":
    if k not in (None, 0):
      raise ValueError(f"K={k} given for AR sampling (one token per step); drop k or pick mode pflm")
    return "ar", 0, None
  if not cfg.is_pflm:
    raise ValueError(f"mode {mode} needs a push-forward model; this one is AR (k_max=0): use mode ar")
  k = cfg.k_max if k is None else k
  if not 1 <= k <= cfg.k_max:
    raise ValueError(f"K={k} outside 1..{cfg.k_max} (the model was trained for k={cfg.k_max}; k=0 means AR)")
  if mode in TEACHER_MODES:
    if teacher_cfg is None:
      raise ValueError(f"mode {mode} needs a teacher")
    if teacher_cfg.is_pflm:
      raise ValueError(f"mode {mode} needs an AR teacher (k_max=0), got k_max={teacher_cfg.k_max}")
    if teacher_cfg.vocab_size != cfg.vocab_size:
      raise ValueError(f"student vocab {cfg.vocab_size} != teacher vocab {teacher_cfg.vocab_size}")
  if mode == "speculative":
    if readout == "argmax":
      raise ValueError("speculative decoding drafts from the student's softmax q (readout sample), not argmax")
    return mode, k, "sample"
  trained = trained_readout or "argmax"
  readout = readout or trained
  if readout == "sample" and trained == "argmax" and warn is not None:
    warn("warning: sampled readout asked of a model trained for argmax readout (its hints were not trained to be "
         "sampled)")
  return mode, k, readout


def make(mode: str, cfg: ModelConfig, num_tokens: int, *, k: int = 0, teacher_cfg: Optional[ModelConfig] = None,
         readout: Optional[str] = "argmax", penalize: bool = False, sampler: str = "icdf"):
  """The jitted decoder of one resolved request (see `resolve`), behind one signature.

  Args:
    mode: one of MODES.
    cfg: the decoding model (the student in verify / speculative mode).
    num_tokens: new tokens per row.
    k: tokens per step (pflm, verify, speculative).
    teacher_cfg: the AR teacher (verify, speculative).
    readout: "argmax" | "sample" (pflm, verify).
    penalize: compile the frequency-penalty path (pflm).
    sampler: the AR sampler (`ar.decoder`).
  Returns:
    fn(params, prompt_BxP, plen_B, *, seed, temperature=1.0, tau=1.0, freq_penalty=0.0, row_offset=0,
       teacher_params=None) -> `Decoded`.
  """
  if mode == "ar":
    fn = ar.decoder(cfg, num_tokens, sampler)

    def run(params, prompt, plen, *, seed, temperature=1.0, tau=1.0, freq_penalty=0.0, row_offset=0,
            teacher_params=None):
      del tau, teacher_params
      if freq_penalty:
        raise ValueError("freq_penalty applies to push-forward decoding only, not to AR sampling")
      return Decoded(np.asarray(fn(params, prompt, plen, seed, temperature, row_offset)))
  elif mode == "pflm":
    fn = pflm.decoder(cfg, k, num_tokens, penalize, readout=readout)

    def run(params, prompt, plen, *, seed, temperature=1.0, tau=1.0, freq_penalty=0.0, row_offset=0,
            teacher_params=None):
      del teacher_params
      if temperature != 1.0:
        raise ValueError("push-forward decoding has no softmax temperature; the noise encoder's input is tau")
      return Decoded(np.asarray(fn(params, prompt, plen, seed, tau, freq_penalty, row_offset)))
  elif mode in TEACHER_MODES:
    fn = (verify.decoder(cfg, teacher_cfg, k, num_tokens, readout=readout) if mode == "verify" else
          speculative.decoder(cfg, teacher_cfg, k, num_tokens))

    def run(params, prompt, plen, *, seed, temperature=1.0, tau=1.0, freq_penalty=0.0, row_offset=0,
            teacher_params=None):
      if freq_penalty:
        raise ValueError(f"freq_penalty is not defined in {mode} mode (the output follows the teacher)")
      if tau != 1.0:
        raise ValueError(f"{mode} mode sets the student's tau to the temperature; do not give tau")
      out = fn(params, teacher_params, prompt, plen, seed, temperature, row_offset)
      return Decoded(*(np.asarray(x) for x in out))
  else:
    raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
  return run


def check_lengths(cfg: ModelConfig, prompt_lens: Sequence[int], num_tokens: int,
                  teacher_cfg: Optional[ModelConfig] = None) -> None:
  """Prompt + new tokens must fit max_len of every model that decodes them (`common.check_request`)."""
  common.check_request(cfg, prompt_lens, num_tokens)
  if teacher_cfg is not None:
    common.check_request(teacher_cfg, prompt_lens, num_tokens)



@dataclasses.dataclass
class Phases:
  """A decoder as two jitted phases with argument adapters, so one timing loop serves every mode.

  prefill(*prefill_args(params, teacher_params, prompt_BxP, plen_B, noises, temperature)) -> state;
  loop(*loop_args(params, teacher_params, state, noises, temperature)) -> outputs (tokens first; with a teacher,
  teacher passes [B] second). `temperature` is the tau in pflm mode (no frequency penalty here).
  """
  noise: Callable      # (seed, batch, width) -> noises
  prefill: Callable
  loop: Callable
  prefill_args: Callable
  loop_args: Callable


def phases(mode: str, cfg: ModelConfig, num_tokens: int, *, k: int = 0, teacher_cfg: Optional[ModelConfig] = None,
           readout: Optional[str] = "argmax", sampler: str = "icdf", unroll: int = 1) -> Phases:
  """The decoder of `make` as `Phases`, for timing prefill apart from the step loop (evaluation/benchmark.py)."""
  def position(length_fn):
    return lambda seed, b, width: common.position_noise(seed, b, length_fn(width))

  if mode == "ar":
    pre, run = ar.phases(cfg, num_tokens, sampler, unroll)
    return Phases(position(lambda w: ar.noise_length(w, num_tokens)), pre, run,
                  lambda p, tp, tok, plen, u, t: (p, tok, plen, u, t), lambda p, tp, s, u, t: (p, *s, u, t))
  if mode == "pflm":
    pre, run = pflm.phases(cfg, k, num_tokens, False, unroll, readout=readout)
    return Phases(position(lambda w: pflm.noise_length(w, num_tokens, k)), pre, run,
                  lambda p, tp, tok, plen, u, t: (p, tok, plen, u, t, 0.0), lambda p, tp, s, u, t: (p, s, u, t, 0.0))
  with_teacher = (lambda p, tp, tok, plen, u, t: (p, tp, tok, plen, u, t), lambda p, tp, s, u, t: (p, tp, s, u, t))
  if mode == "verify":
    pre, run = verify.phases(cfg, teacher_cfg, k, num_tokens, readout=readout)
    return Phases(position(lambda w: verify.noise_length(w, num_tokens, k)), pre, run, *with_teacher)
  if mode == "speculative":
    noise_fn, pre, run = speculative.phases(cfg, teacher_cfg, k, num_tokens)
    return Phases(noise_fn, pre, run, *with_teacher)
  raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
