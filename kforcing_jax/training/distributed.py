"""Multi-controller JAX: one Python process per host, joined by `jax.distributed.initialize`.

Where the process learns its place, in order of precedence:
  KFJ_DISTRIBUTED=off                      single process, whatever else is set
  KFJ_COORDINATOR=host:port, KFJ_NUM_PROCESSES=N, KFJ_PROCESS_ID=i
                                           explicit (GPU over ssh, tests on 127.0.0.1)
  KFJ_DISTRIBUTED=auto                     `jax.distributed.initialize()` with no arguments: JAX reads the cluster
                                           itself (Cloud TPU pod slices and multislice, SLURM, Open MPI, k8s)
  SLURM_* of a job step with >1 task       as `auto`
  nothing                                  single process (the laptop / CI path; nothing is initialised)
Timeouts (seconds): KFJ_INIT_TIMEOUT bounds how long process i waits for the others to show up (default 300);
KFJ_HEARTBEAT_TIMEOUT is how long a silent peer may stay silent before the coordination service declares it
dead and every other process aborts (default 100). The abort matters: without it a survivor blocks forever in
its next collective when a peer is preempted.

`initialize_from_env()` must run before anything touches a JAX backend (`jax.devices()`, the first jit).
"""
import dataclasses
import os
import re
from typing import Any, Mapping, Optional

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

ENV_MODE = "KFJ_DISTRIBUTED"
ENV_COORDINATOR = "KFJ_COORDINATOR"
ENV_NUM_PROCESSES = "KFJ_NUM_PROCESSES"
ENV_PROCESS_ID = "KFJ_PROCESS_ID"
ENV_INIT_TIMEOUT = "KFJ_INIT_TIMEOUT"
ENV_HEARTBEAT_TIMEOUT = "KFJ_HEARTBEAT_TIMEOUT"
DEFAULT_INIT_TIMEOUT = 300
DEFAULT_HEARTBEAT_TIMEOUT = 100
# JAX's own SlurmCluster needs all of these; a one-task step (`srun -n1`, an interactive allocation) stays single.
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")


@dataclasses.dataclass(frozen=True)
class DistributedSpec:
  """How this process joins the job: mode "single", "explicit" (address/count/id given) or "auto" (JAX detects)."""
  mode: str = "single"
  coordinator_address: Optional[str] = None
  num_processes: Optional[int] = None
  process_id: Optional[int] = None
  initialization_timeout: int = DEFAULT_INIT_TIMEOUT
  heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT


def _int_env(env: Mapping[str, str], name: str, default: Optional[int], lo: int) -> Optional[int]:
  raw = env.get(name)
  if raw is None or raw == "":
    return default
  try:
    value = int(raw)
  except ValueError:
    raise ValueError(f"{name}={raw!r} is not an integer") from None
  if value < lo:
    raise ValueError(f"{name}={value} must be >= {lo}")
  return value


def spec_from_env(environ: Optional[Mapping[str, str]] = None) -> DistributedSpec:
  """Reads how this process joins a multi-process job from the environment (see the module docstring).

  Args:
    environ: the environment (default `os.environ`).
  Returns:
    A `DistributedSpec`.
  Raises:
    ValueError: an incomplete or malformed KFJ_* setting (one line saying which).
  """
  env = os.environ if environ is None else environ
  timeouts = dict(initialization_timeout=_int_env(env, ENV_INIT_TIMEOUT, DEFAULT_INIT_TIMEOUT, 1),
                  heartbeat_timeout=_int_env(env, ENV_HEARTBEAT_TIMEOUT, DEFAULT_HEARTBEAT_TIMEOUT, 1))
  mode = env.get(ENV_MODE, "").strip().lower()
  if mode not in ("", "auto", "off"):
    raise ValueError(f"{ENV_MODE}={env[ENV_MODE]!r}: expected 'auto' or 'off'")
  if mode == "off":
    return DistributedSpec(**timeouts)
  explicit = [n for n in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID) if env.get(n)]
  if explicit:
    missing = [n for n in (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID) if n not in explicit]
    if missing:
      raise ValueError(f"{', '.join(explicit)} set but {', '.join(missing)} missing: set all three")
    address = env[ENV_COORDINATOR].strip()
    m = _ADDRESS.match(address)
    if not m or not 0 < int(m.group(2)) < 65536:
      raise ValueError(f"{ENV_COORDINATOR}={address!r} is not host:port")
    n = _int_env(env, ENV_NUM_PROCESSES, None, 1)
    i = _int_env(env, ENV_PROCESS_ID, None, 0)
    if i >= n:
      raise ValueError(f"{ENV_PROCESS_ID}={i} must be < {ENV_NUM_PROCESSES}={n}")
    if n == 1:
      return DistributedSpec(**timeouts)
    return DistributedSpec("explicit", address, n, i, **timeouts)
  if mode == "auto":
    return DistributedSpec("auto", **timeouts)
  if all(v in env for v in _SLURM_VARS) and int(env.get("SLURM_NTASKS", "1") or 1) > 1:
    return DistributedSpec("auto", **timeouts)
  return DistributedSpec(**timeouts)


def initialize(spec: Optional[DistributedSpec] = None) -> DistributedSpec:
  """Joins the multi-process job described by `spec` (default: `spec_from_env()`); idempotent.

  Args:
    spec: how to join; "single" does nothing.
  Returns:
    The spec used.
  Raises:
    RuntimeError: a JAX backend is already up (initialisation must come first), or the coordinator did not
      answer within the initialization timeout.
  """
  spec = spec_from_env() if spec is None else spec
  if spec.mode == "single" or jax.distributed.is_initialized():
    return spec
  kw = dict(initialization_timeout=spec.initialization_timeout, heartbeat_timeout_seconds=spec.heartbeat_timeout)
  if spec.mode == "explicit":
    kw.update(coordinator_address=spec.coordinator_address, num_processes=spec.num_processes,
              process_id=spec.process_id)
  elif spec.mode != "auto":
    raise ValueError(f"unknown distributed mode {spec.mode!r}")
  # Said before the call: if a peer never comes, JAX aborts the process after the timeout with a C++ log line only.
  logging.info("joining a multi-process job (%s): jax.distributed.initialize(%s); gives up after %d s",
               spec.mode, kw, spec.initialization_timeout)
  try:
    jax.distributed.initialize(**kw)
  except RuntimeError as e:
    raise RuntimeError(f"jax.distributed.initialize failed ({spec.mode}, {kw}): {e}".splitlines()[0]) from e
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return spec


def initialize_from_env(environ: Optional[Mapping[str, str]] = None) -> DistributedSpec:
  """`initialize(spec_from_env(environ))`: the one call an entry point makes before touching JAX."""
  return initialize(spec_from_env(environ))


def is_main_process() -> bool:
  """True on the process that logs and writes (process 0); True when single-process."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Barrier across processes (no-op when single-process), e.g. before process 0 reads what all wrote."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def global_batch(local_batch: Any, sharding_of) -> Any:
  """Assembles global arrays from this process's rows; every process passes its own, equally sized shard.

  Args:
    local_batch: a tree of host arrays [local_batch, ...] (process i holds rows i*local..(i+1)*local-1 of the
      global batch, the data pipeline's `shard_index`/`shard_count` contract).
    sharding_of: a `jax.sharding.Sharding`, or a function from the leaf's ndim to one.
  Returns:
    The tree of global `jax.Array`s [local_batch * process_count, ...].
  """
  def one(x):
    sh = sharding_of(np.ndim(x)) if callable(sharding_of) else sharding_of
    return jax.make_array_from_process_local_data(sh, np.asarray(x))
  return jax.tree.map(one, local_batch)


def host_mean(tree: Any) -> Any:
  """Averages host-side numbers (counts, timings, a local eval sum) over processes; identity when single-process.

  Values computed inside a jitted step over the global batch are already global and need no reduction.
  """
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  gathered = multihost_utils.process_allgather(jax.tree.map(np.asarray, tree))
  return jax.tree.map(lambda x: np.mean(x, axis=0), gathered)


def shutdown() -> None:
  """Leaves the job cleanly (no-op when single-process), so peers do not report this process as dead."""
  if jax.distributed.is_initialized():
    jax.distributed.shutdown()
