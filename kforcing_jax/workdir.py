"""The run directory: the only code that knows its layout, its checkpoints and what makes two runs compatible.

  WORKDIR/
    checkpoints/<step>/     one orbax Composite checkpoint per saved step:
        params              the model parameters (always)
        meta                JSON: {"model": ModelConfig dict, "tokenizer": spec, "stage", "k", "readout", ...}
        train_state         optimizer state, step, RNG (trainer only)
        data                the grain iterator state (trainer only)
        kf_manifest.json    size + sha256 of every other file of the step, written after orbax finished
    tokenizer/              the run's tokenizer (kforcing_jax.data.tokenizers)
    corrupt/<step>/         steps that failed verification, moved aside by the trainer (never deleted)
    metrics.jsonl, tensorboard/, DONE.json (the demo)

Integrity: a step is usable when orbax restores it and its content matches its manifest (a step from before
manifests, or one whose save was cut between orbax's commit and the manifest, has none and is read unchecked).
A step that fails is treated like an unreadable one: the restore falls back to the previous good step with one
notice line; with none left it raises `CheckpointError` (the CLIs: one error line, exit 2). The trainer moves
the failed newer steps into corrupt/ so that the resumed run can save those step numbers again.
"""
import dataclasses
import hashlib
import json
import os
import sys
from typing import Any, Optional, Sequence

import jax
from etils import epath
import orbax.checkpoint as ocp

from kforcing_jax import files
from kforcing_jax.models.config import ModelConfig
from kforcing_jax.models.params import check_params

MANIFEST = "kf_manifest.json"
# Fields that change the parameters or the function computed; the rest (attention_impl, remat, dtype, tiles,
# dropout, max_len) are how it is computed and may differ between a teacher and its student.
ARCH_FIELDS = ("vocab_size", "num_layers", "d_model", "num_heads", "mlp_dim", "mask_index", "rope_base", "norm",
               "norm_eps", "mlp", "mlp_bias", "num_kv_heads", "attn_head_dim", "qkv_bias", "attn_out_bias", "qk_norm",
               "position", "rope_layout", "tie_embeddings", "head_bias")
TOKENIZER_KEYS = ("kind", "vocab_size", "fingerprint", "bos_id", "eos_id")


class BadInputError(ValueError):
  """A user error (config, teacher, workdir, flag) that a CLI reports in one line with exit status 2."""


class CheckpointError(BadInputError):
  """No usable checkpoint in a workdir."""


def notice(msg: str) -> None:
  """One plain stderr line for the events a user must know (resumed, fell back, nothing to do)."""
  print(msg, file=sys.stderr, flush=True)


# ---- layout ----------------------------------------------------------------------------------------------------

def exists(path: str) -> bool:
  """Whether a directory exists, local or on an object store (epath; gs:// needs gcsfs, the `tpu` extra)."""
  return epath.Path(path).is_dir()


def absolute(workdir: str) -> str:
  """`workdir` as an absolute path (orbax wants them; a gs:// path is returned as it is)."""
  workdir = str(workdir)
  return workdir if "://" in workdir else os.path.abspath(workdir)


def checkpoint_dir(workdir: str) -> str:
  """WORKDIR/checkpoints (absolute)."""
  return str(epath.Path(absolute(workdir)) / "checkpoints")


def has_checkpoints(workdir: str) -> bool:
  """Whether WORKDIR/checkpoints exists (it may still hold no usable step)."""
  return exists(checkpoint_dir(workdir))


def steps(workdir: str) -> list[int]:
  """The saved (orbax-committed) steps, ascending."""
  if not has_checkpoints(workdir):
    return []
  mngr = manager(workdir, max_to_keep=None, async_save=False, create=False)
  out = sorted(mngr.all_steps())
  mngr.close()
  return out


def manager(workdir: str, max_to_keep: Optional[int] = 3, async_save: bool = True,
            create: bool = True) -> ocp.CheckpointManager:
  """The workdir's orbax CheckpointManager (async saves, keep-N); prefer `Writer`, which also seals steps.

  Args:
    workdir: the run directory (local path or gs://).
    max_to_keep: how many steps to keep (None: all).
    async_save: save in a background thread.
    create: create the directory if missing.
  Returns:
    An `ocp.CheckpointManager`.
  """
  opts = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                      enable_async_checkpointing=async_save)
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=opts)


# ---- integrity -------------------------------------------------------------------------------------------------

def _step_dir(workdir: str, step: int) -> epath.Path:
  return epath.Path(checkpoint_dir(workdir)) / str(step)


def _digest(path: epath.Path) -> tuple[int, str]:
  h, size = hashlib.sha256(), 0
  with path.open("rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
      size += len(chunk)
  return size, h.hexdigest()


def _content(step_dir: epath.Path) -> dict:
  out, todo = {}, [step_dir]
  while todo:  # an explicit walk: epath refuses recursive globs on object stores
    for p in sorted(todo.pop().iterdir()):
      if p.is_dir():
        todo.append(p)
        continue
      rel = str(p.relative_to(step_dir))
      if rel != MANIFEST:
        size, sha = _digest(p)
        out[rel] = {"size": size, "sha256": sha}
  return out


def seal(workdir: str, step: int) -> None:
  """Writes the step's content manifest (call only after orbax finished writing the step)."""
  d = _step_dir(workdir, step)
  files.write_text(str(d / MANIFEST), json.dumps({"step": int(step), "files": _content(d)}, indent=0))


def verify(workdir: str, step: int) -> Optional[str]:
  """Checks a step against its manifest.

  Args:
    workdir: the run directory.
    step: a saved step.
  Returns:
    None when the content matches (or the step has no manifest), else what differs (one line).
  """
  d = _step_dir(workdir, step)
  if not (d / MANIFEST).exists():
    return None
  sig = _stat_signature(d)
  if sig is not None and _VERIFIED.get(str(d)) == sig:
    return None  # verified in this process and untouched since (e.g. read_meta, then the full restore)
  why = _compare(d)
  if why is None and sig is not None:
    _VERIFIED[str(d)] = sig
  return why


_VERIFIED = {}


def _stat_signature(d: epath.Path):
  if "://" in str(d):
    return None
  out = []
  for root, _, names in os.walk(str(d)):
    for n in names:
      st = os.stat(os.path.join(root, n))
      out.append((os.path.join(root, n), st.st_size, st.st_mtime_ns, st.st_ino))
  return tuple(sorted(out))


def _compare(d: epath.Path) -> Optional[str]:
  try:
    want = json.loads((d / MANIFEST).read_text())["files"]
  except (ValueError, KeyError, OSError) as e:
    return f"unreadable manifest ({type(e).__name__})"
  have = _content(d)
  for rel in sorted(set(want) | set(have)):
    if rel not in have:
      return f"{rel} is missing"
    if rel not in want:
      return f"{rel} is not in the manifest"
    if have[rel]["size"] != want[rel]["size"]:
      return f"{rel} has {have[rel]['size']} bytes, {want[rel]['size']} were saved"
    if have[rel]["sha256"] != want[rel]["sha256"]:
      return f"{rel} does not match its checksum"
  return None


def quarantine(workdir: str, bad_steps: Sequence[int]) -> list[str]:
  """Moves failed steps into WORKDIR/corrupt/ (never deletes them); returns the new paths."""
  if jax.process_index() != 0:
    return []
  root = epath.Path(absolute(workdir)) / "corrupt"
  root.mkdir(parents=True, exist_ok=True)
  moved = []
  for s in bad_steps:
    dest, n = root / str(s), 1
    while dest.exists():
      dest, n = root / f"{s}.{n}", n + 1
    _step_dir(workdir, s).rename(dest)
    moved.append(str(dest))
  return moved


# ---- save / restore --------------------------------------------------------------------------------------------

class Writer:
  """Saves steps (asynchronously) and seals each one with its manifest once orbax has finished it.

  Sealing step s waits for s to finish; it happens at the next save or at `close`, so a save still overlaps the
  training steps that follow it.
  """

  def __init__(self, workdir: str, max_to_keep: Optional[int] = 3, async_save: bool = True):
    self.workdir = workdir
    self._mngr = manager(workdir, max_to_keep=max_to_keep, async_save=async_save)
    self._pending = None

  def _seal_pending(self):
    self._mngr.wait_until_finished()
    if self._pending is not None and jax.process_index() == 0 and self._pending in self._mngr.all_steps():
      seal(self.workdir, self._pending)
    self._pending = None

  def save(self, step: int, params, meta: dict, train_state=None, data_state=None) -> None:
    """Saves one step: params and meta always, `train_state` / `data_state` (a grain save arg) optionally."""
    self._seal_pending()
    items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
    if train_state is not None:
      items["train_state"] = ocp.args.StandardSave(train_state)
    if data_state is not None:
      items["data"] = data_state
    self._mngr.save(step, args=ocp.args.Composite(**items), force=True)
    self._pending = step

  def close(self) -> None:
    """Waits for the last save, seals it and closes the manager."""
    self._seal_pending()
    self._mngr.close()


def write_new(workdir: str, params, meta: dict, tokenizer=None, step: int = 0) -> None:
  """Writes a fresh workdir (one sealed step + tokenizer), e.g. a converted checkpoint; refuses a non-empty one.

  Raises:
    BadInputError: `workdir` exists and is not empty, or the tokenizer does not fit the model.
  """
  p = epath.Path(absolute(workdir))
  if p.exists() and (not p.is_dir() or any(p.iterdir())):
    raise BadInputError(f"workdir {workdir} exists and is not empty; refusing to overwrite it")
  if tokenizer is not None:
    check_tokenizer_fits(tokenizer.spec, ModelConfig.from_dict(meta["model"]), str(workdir))
  w = Writer(workdir, max_to_keep=None, async_save=False)
  w.save(step, params, meta)
  w.close()
  if tokenizer is not None:
    tokenizer.save(str(workdir))


def _restore_args(items, abstract_params, abstract_train_state, data_state):
  make = {"params": lambda: ocp.args.StandardRestore(abstract_params),
          "train_state": lambda: ocp.args.StandardRestore(abstract_train_state),
          "meta": ocp.args.JsonRestore, "data": lambda: data_state}
  return ocp.args.Composite(**{name: make[name]() for name in items})


def restore(workdir: str, step: Optional[int] = None, abstract_params=None, abstract_train_state=None,
            data_state=None, items: Sequence[str] = ("params", "meta"), move_bad: bool = False) -> tuple[int, dict]:
  """Restores the newest good step (or `step`): orbax-readable and matching its manifest.

  Args:
    workdir: the run directory.
    step: a specific step, or None for the newest good one.
    abstract_params: ShapeDtypeStructs (with shardings) to restore params onto; None restores as saved.
    abstract_train_state: likewise for "train_state".
    data_state: a grain restore arg for "data".
    items: which items to read.
    move_bad: move newer failed steps into corrupt/ (the trainer, so that it can save them again).
  Returns:
    (step, {item: value}).
  Raises:
    CheckpointError: no checkpoint, or none good.
  """
  if not has_checkpoints(workdir):
    raise CheckpointError(f"no checkpoint in {workdir} (missing {checkpoint_dir(workdir)})")
  have = steps(workdir)
  if step is not None and step not in have:
    raise CheckpointError(f"step {step} not in {workdir} (have {have})")
  candidates = [step] if step is not None else sorted(have, reverse=True)
  if not candidates:
    raise CheckpointError(f"no checkpoint in {workdir}")
  mngr = manager(workdir, max_to_keep=None, async_save=False, create=False)
  errors = []
  try:
    for s in candidates:
      why = verify(workdir, s)
      if why is None:
        try:
          out = mngr.restore(s, args=_restore_args(items, abstract_params, abstract_train_state, data_state))
        except Exception as e:  # orbax raises many types for a truncated / corrupt step
          why = " ".join(f"{type(e).__name__}: {e}".split())[:160]
      if why is None:
        if errors:
          moved = quarantine(workdir, [b for b, _ in errors]) if move_bad else []
          notice(f"warning: checkpoint step {errors[0][0]} in {workdir} is unusable ({errors[0][1]}); fell back to "
                 f"step {s}" + (f" (moved {len(moved)} bad step(s) to {os.path.dirname(moved[0])})" if moved else ""))
        return s, {k: out[k] for k in items}
      errors.append((s, why))
  finally:
    mngr.close()
  raise CheckpointError(f"no usable checkpoint in {workdir}: " + "; ".join(f"step {s}: {m}" for s, m in errors))


def read_meta(workdir: str, step: Optional[int] = None) -> tuple[int, dict]:
  """The JSON metadata of the newest good step (the step's content is verified, so this is not free)."""
  s, out = restore(workdir, step, items=("meta",))
  return s, out["meta"]


def to_abstract(tree: Any, shardings=None):
  """ShapeDtypeStructs of a tree (optionally carrying shardings) for `restore`."""
  if shardings is None:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


# ---- tokenizer and compatibility -------------------------------------------------------------------------------

def load_tokenizer(workdir: str, expected_spec: Optional[dict] = None):
  """WORKDIR/tokenizer, checked against its own spec and `expected_spec` (a checkpoint's meta["tokenizer"])."""
  from kforcing_jax.data import tokenizers
  return tokenizers.load_tokenizer(workdir, expected_spec)


def check_tokenizer_fits(spec: dict, cfg: ModelConfig, where: str = "") -> None:
  """The one tokenizer <-> model rule: the same vocabulary size and the same mask id.

  Args:
    spec: a tokenizer spec (`Tokenizer.spec`).
    cfg: the model config.
    where: a workdir (or other name) for the message.
  Raises:
    BadInputError: naming both values and the config field to change.
  """
  at = f"{where}: " if where else ""
  if int(spec.get("vocab_size", -1)) != cfg.vocab_size:
    raise BadInputError(f"{at}tokenizer ({spec.get('kind')}) has {spec.get('vocab_size')} ids but "
                        f"model.vocab_size={cfg.vocab_size}; set --config.model.vocab_size={spec.get('vocab_size')}")
  if int(spec.get("mask_index", -1)) != cfg.mask_index:
    raise BadInputError(f"{at}tokenizer ({spec.get('kind')}) has mask id {spec.get('mask_index')} but "
                        f"model.mask_index={cfg.mask_index}; set --config.model.mask_index={spec.get('mask_index')}")


def check_same_tokenizer(a_spec: dict, b_spec: dict, a_name: str, b_name: str) -> None:
  """Raises BadInputError unless two models read and write the same token ids (e.g. a student and a teacher)."""
  diff = [x for x in TOKENIZER_KEYS if a_spec.get(x) != b_spec.get(x)]
  if diff:
    raise BadInputError(f"{a_name} and {b_name} use different tokenizers ({', '.join(diff)} differ)")


def arch_mismatch(a: dict, b: dict) -> list[str]:
  """Architecture fields on which two model-config dicts differ ("name: a != b")."""
  # Metas written before a field existed hold its default.
  default = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
  a, b = ({f: d.get(f, default.get(f)) for f in ARCH_FIELDS} for d in (a, b))
  return [f"{f}: {a[f]} != {b[f]}" for f in ARCH_FIELDS if a[f] != b[f]]


def load_model(workdir: str, step: Optional[int] = None) -> tuple[int, ModelConfig, dict, Any, dict]:
  """Restores a workdir's newest good step as (step, ModelConfig, params, tokenizer, meta), all checked.

  Raises:
    BadInputError: no good checkpoint, a missing / mismatching tokenizer, params that do not fit the config.
  """
  s, items = restore(workdir, step)
  meta = items["meta"]
  try:
    cfg = ModelConfig.from_dict(meta["model"])
    check_params(cfg, items["params"])
  except (KeyError, TypeError, ValueError) as e:
    raise BadInputError(f"{workdir} step {s}: {e}") from e
  tok = load_tokenizer(workdir, meta.get("tokenizer"))
  check_tokenizer_fits(tok.spec, cfg, str(workdir))
  return s, cfg, items["params"], tok, meta


def check_resume(workdir: str, stage: str, mcfg: ModelConfig, k: int) -> Optional[dict]:
  """The meta of WORKDIR's newest good step if it belongs to this run, None if WORKDIR has no checkpoint.

  Newer steps that fail verification are moved into corrupt/ (one notice line), so the run saves them again.

  Raises:
    BadInputError: the checkpoint belongs to another run, or every step is unusable (nothing is touched then).
  """
  if not steps(workdir):
    return None
  try:
    _, out = restore(workdir, items=("meta",), move_bad=True)
  except CheckpointError as e:
    raise BadInputError(f"{workdir} holds no usable checkpoint; refusing to overwrite it ({e})") from e
  meta = out["meta"]
  bad = arch_mismatch(meta.get("model", {}), mcfg.to_dict())
  if meta.get("stage") != stage or int(meta.get("k", -1)) != k or bad:
    raise BadInputError(
        f"{workdir} holds a checkpoint of another run (stage={meta.get('stage')}, k={meta.get('k')}"
        f"{', ' + '; '.join(bad) if bad else ''}); refusing to overwrite it, use a new --workdir")
  return meta


def check_teacher(teacher_workdir: str, student: ModelConfig, targets: str,
                  target_teacher: str = "previous") -> tuple[ModelConfig, dict]:
  """Checks (from its meta only) that a teacher fits the student; cheap, so it runs before anything else.

  Args:
    teacher_workdir: a workdir holding an AR or push-forward checkpoint.
    student: the student's model config (k_max = its k).
    targets: "self_forcing" or "noise_inversion".
    target_teacher: "previous" (the targets come from this teacher: k must double its k) or "ar" (it only
      initialises the student; the targets come from the AR teacher, so any k is allowed).
  Returns:
    (the teacher's ModelConfig with the student's computation settings, the teacher's meta).
  Raises:
    BadInputError: missing or empty workdir, architecture / vocab mismatch, k not a doubling of the teacher's.
  """
  if not teacher_workdir:
    raise BadInputError("stage pflm needs --config.teacher_workdir=DIR (a trained AR or push-forward workdir)")
  try:
    _, meta = read_meta(teacher_workdir)
  except CheckpointError as e:
    raise BadInputError(f"teacher_workdir: {e}") from e
  tmodel = meta.get("model", {})
  bad = arch_mismatch(tmodel, student.to_dict())
  if bad:
    raise BadInputError(f"teacher in {teacher_workdir} does not match the student config ({'; '.join(bad)})")
  tk = int(tmodel.get("k_max", 0))
  k = student.k_max
  teacher = student.replace(k_max=tk, hint_noise=tmodel.get("hint_noise", "current"),
                            feedback_layers=int(tmodel.get("feedback_layers", 0)))
  if target_teacher == "ar":
    if tk > k:
      raise BadInputError(f"teacher in {teacher_workdir} has k={tk} > the student's k={k}")
    return teacher, meta
  if targets == "noise_inversion" and tk != 0:
    raise BadInputError(f"noise_inversion needs an AR teacher; {teacher_workdir} is a k={tk} push-forward model")
  if targets == "self_forcing" and tk == 0 and k != 1:
    raise BadInputError(f"self-forcing from an AR teacher trains k=1, got k={k} (distill 1 -> 2 -> 4 in stages)")
  if targets == "self_forcing" and tk > 0 and k != 2 * tk:
    raise BadInputError(f"k={k} is not a doubling of the teacher's k={tk} (a k -> 2k stage needs k={2 * tk})")
  return teacher, meta


def resolve_ar_teacher(workdir: str, max_hops: int = 8) -> str:
  """The AR teacher at the root of a distillation chain: `workdir` itself if it is AR, else the workdir its meta
  names (ar_teacher_workdir, then teacher_workdir), followed up to `max_hops` times. Raises BadInputError."""
  seen = []
  for _ in range(max_hops):
    try:
      _, meta = read_meta(workdir)
    except CheckpointError as e:
      raise BadInputError(f"resolving the AR teacher: {e}; set --config.ar_teacher_workdir") from e
    if int(meta.get("model", {}).get("k_max", 0)) == 0:
      return workdir
    seen.append(workdir)
    workdir = meta.get("ar_teacher_workdir") or meta.get("teacher_workdir")
    if not workdir:
      break
  raise BadInputError(f"no AR teacher found along the chain {seen}; set --config.ar_teacher_workdir")


def tokenizer_for_run(data_cfg, workdir: str, source_workdir: Optional[str], resuming: bool):
  """Loads or builds a training run's tokenizer and saves it into `workdir`.

  A resumed run reloads WORKDIR/tokenizer; a distillation run uses its teacher's; a run initialised from another
  workdir uses that one's; a run from scratch builds one from `data_cfg`.

  Args:
    data_cfg: the experiment's `config.data` block.
    workdir: this run's directory.
    source_workdir: the teacher's / init workdir, or None.
    resuming: whether `workdir` already holds a checkpoint of this run.
  Returns:
    A tokenizer object (`.encode`, `.decode`, `.vocab_size`, `.mask_index`, `.spec`, `.save`).
  """
  from kforcing_jax.data import tokenizers
  if resuming:
    return load_tokenizer(workdir)
  if source_workdir:
    tok = tokenizers.source_tokenizer(data_cfg, source_workdir)  # data.tokenizer: "teacher" or the source's kind
  else:
    # Multi-host: every process builds the same (deterministic) tokenizer; only process 0 writes it.
    tok = tokenizers.build_tokenizer(data_cfg, workdir, save=jax.process_index() == 0)
  if jax.process_index() == 0:
    tok.save(workdir)
  return tok
