r"""One launcher for Cloud TPU VMs / pod slices (and local multi-process runs): prints or runs gcloud commands.

  python launch/tpu.py create --name kf --zone us-central2-b --project P --accelerator_type v4-32 [--spot] [--queued]
  python launch/tpu.py setup  --name kf --zone us-central2-b --project P
  python launch/tpu.py run    --name kf --zone us-central2-b --project P --accelerator_type v4-32 \
      --config experiments/configs/tiny_cpu.py:stage=ar --workdir gs://BUCKET/kforcing/ar [-- --config.num_steps=100]
  python launch/tpu.py logs   --name kf --zone us-central2-b --project P [--worker 0] [--follow]
  python launch/tpu.py stop   --name kf --zone us-central2-b --project P      # kill the run on every worker
  python launch/tpu.py delete --name kf --zone us-central2-b --project P [--queued]
  python launch/tpu.py local  --num_processes 2 --devices_per_process 2 \
      --config experiments/configs/tiny_cpu.py:stage=ar --workdir /tmp/kf/ar [-- --config.num_steps=20]

`--dry_run` prints the exact commands (one per line, shell-quoted) and runs nothing. Bad input (unknown or malformed
accelerator type, a mesh or global batch that does not fit it, missing zone or project, an unwritable workdir)
is reported as one `error: ...` line with exit status 2 before any command runs.

Accelerator types (the number after the dash is TensorCores for v2/v3/v4/v5p and chips for v5e/v6e):
  type            chips   JAX devices   hosts            e.g.
  v2-N, v3-N      N/2     N             N/8              v3-32: 16 chips, 32 devices, 4 hosts
  v4-N, v5p-N     N/2     N/2           max(1, N/8)      v4-32: 16 chips, 16 devices (megacore), 4 hosts
  v5litepod-N     N       N             1 if N<=8, N/4   v5litepod-16: 16 chips, 4 hosts
  v6e-N           N       N             1 if N<=8, N/4   v6e-64: 64 chips, 16 hosts
"""
import argparse
import ast
import contextlib
import dataclasses
import datetime
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR = "~/kforcing_jax"
LOG_DIR = "~/kfj_logs"
_RUNTIME = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
            "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
_BUCKET = re.compile(r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$")


class UsageError(ValueError):
  """Bad launcher input; main prints it as one line and exits 2."""


@dataclasses.dataclass(frozen=True)
class Accelerator:
  """What an accelerator type gives: chips, JAX devices (all hosts) and hosts per slice."""
  name: str
  family: str
  chips: int
  devices: int
  hosts: int


def parse_accelerator(name: str) -> Accelerator:
  """Chips, devices and hosts of a Cloud TPU accelerator type (table in the module docstring).

  Args:
    name: e.g. "v4-32", "v5litepod-16", "v5p-8", "v6e-8".
  Returns:
    An `Accelerator`.
  Raises:
    UsageError: unknown family or a size that family does not come in.
  """
  m = re.fullmatch(r"(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)", name or "")
  if not m:
    raise UsageError(f"unknown accelerator type {name!r}; expected e.g. v4-32, v5litepod-16, v5p-8, v6e-8")
  family, n = m.group(1), int(m.group(2))
  if family in ("v2", "v3", "v4", "v5p"):  # N counts TensorCores, 2 per chip
    if n < 8 or n % 8:
      raise UsageError(f"{name}: {family} slices come in multiples of 8 TensorCores (e.g. {family}-8, {family}-32)")
    chips = n // 2
    devices = n if family in ("v2", "v3") else chips  # v4/v5p: one megacore device per chip
    hosts = max(1, n // 8)
  else:  # v5e / v6e: N counts chips, one device each
    if n not in (1, 4, 8) and (n < 16 or n & (n - 1)):
      raise UsageError(f"{name}: {family} slices have 1, 4, 8 or a power of two >= 16 chips")
    chips = devices = n
    hosts = 1 if n <= 8 else n // 4
  return Accelerator(name, family, chips, devices, hosts)


# ----------------------------------------------------------------------------------------------------------------
# Config checks (mesh / batch vs the accelerator), without touching JAX devices.
# ----------------------------------------------------------------------------------------------------------------
def load_config(spec: str, overrides: Sequence[str] = ()):
  """Loads `path.py[:arg]` (relative to the repo root) and applies `--config.a.b=value` overrides.

  Args:
    spec: the config file and its argument, as given to `python -m kforcing_jax.train --config`.
    overrides: trainer arguments; only `--config.X=Y` ones are applied.
  Returns:
    The ConfigDict.
  Raises:
    UsageError: missing file, a file without get_config, or an override of an unknown field.
  """
  path, _, arg = spec.partition(":")
  full = path if os.path.isabs(path) else os.path.join(REPO, path)
  if not os.path.isfile(full):
    raise UsageError(f"config file {path} not found")
  mod_spec = importlib.util.spec_from_file_location("_kfj_launch_config", full)
  mod = importlib.util.module_from_spec(mod_spec)
  try:
    mod_spec.loader.exec_module(mod)
    cfg = mod.get_config(arg or None)
  except Exception as e:
    raise UsageError(f"config {spec}: {type(e).__name__}: {e}".splitlines()[0]) from e
  for o in overrides:
    m = re.fullmatch(r"--config\.([\w.]+)=(.*)", o)
    if not m:
      continue
    *parents, leaf = m.group(1).split(".")
    node = cfg
    try:
      for p in parents:
        node = node[p]
      old = node[leaf]
    except (KeyError, AttributeError, TypeError):
      raise UsageError(f"unknown config key {m.group(1)}") from None
    value = m.group(2)
    if isinstance(old, (list, dict)) or hasattr(old, "keys"):  # what ml_collections' config_flags refuses too
      raise UsageError(f"--config.{m.group(1)} cannot be overridden on the command line (a list / dict field); "
                       "set it in a config file")
    if not isinstance(old, str):
      try:
        value = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        raise UsageError(f"--config.{m.group(1)}={value!r} is not a Python literal") from None
    with contextlib.ExitStack() as stack:
      if hasattr(cfg, "unlocked"):
        stack.enter_context(cfg.unlocked())
      node[leaf] = value
  return cfg


def check_config(cfg, devices: int, num_processes: int, num_slices: int = 1) -> dict:
  """Raises UsageError unless the config's mesh fits `devices` and its global batch splits over data axes/hosts.

  Returns:
    {axis: size} of the mesh the trainer will build.
  """
  sys.path.insert(0, REPO)
  from kforcing_jax.training import mesh_presets
  mesh = cfg.get("mesh") if hasattr(cfg, "get") else None
  rules = cfg.get("sharding_rules") if hasattr(cfg, "get") else None
  if mesh is None or rules is None:
    raise UsageError("config has no mesh / sharding_rules")
  n = int(cfg.get("num_devices", -1) or -1)
  if n > 0 and n != devices:
    raise UsageError(f"config.num_devices={n} but the accelerator has {devices} devices")
  try:
    granules = num_slices if mesh_presets.is_hybrid(mesh) else 1
    sizes = mesh_presets.resolve_sizes(mesh, devices, granules)
    mesh_presets.check_batch(int(cfg.batch_size), sizes, rules, num_processes)
  except ValueError as e:
    raise UsageError(f"mesh/batch do not fit {devices} devices: {e}") from None
  return sizes


def check_workdir(workdir: str, multi_host: bool) -> None:
  """gs:// paths: bucket name form; local paths: writable (nearest existing parent); multi-host needs gs://."""
  if not workdir:
    raise UsageError("--workdir is required")
  if workdir.startswith("gs://"):
    if not _BUCKET.match(workdir) or ".." in workdir or "//" in workdir[5:]:
      raise UsageError(f"workdir {workdir} is not gs://BUCKET/PATH with a valid bucket name")
    return
  if "://" in workdir:
    raise UsageError(f"workdir {workdir}: only local paths and gs:// are supported")
  if multi_host:
    raise UsageError(f"workdir {workdir} is local but the slice has several hosts; use gs://BUCKET/...")
  path = os.path.abspath(os.path.expanduser(workdir))
  parent = path
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise UsageError(f"workdir {workdir} is not writable ({parent} is not a writable directory)")


# ----------------------------------------------------------------------------------------------------------------
# gcloud command builders (pure: each returns a list of argv lists).
# ----------------------------------------------------------------------------------------------------------------
def _where(a) -> list:
  return [f"--zone={a.zone}", f"--project={a.project}"]


def _nodes(a) -> list:
  # A multislice queued resource names its nodes NAME-0, NAME-1, ... (`--node-prefix=NAME`).
  return [a.name] if a.num_slices == 1 else [f"{a.name}-{i}" for i in range(a.num_slices)]


def _ssh(a, node: str, command: str, worker: str = "all") -> list:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", node, *_where(a), f"--worker={worker}",
          f"--command={command}"]


def cmd_create(a) -> list:
  acc = parse_accelerator(a.accelerator_type)
  version = a.runtime_version or _RUNTIME[acc.family]
  if a.queued:
    c = ["gcloud", "compute", "tpus", "queued-resources", "create", a.name, *_where(a),
         f"--accelerator-type={acc.name}", f"--runtime-version={version}"]
    c += [f"--node-id={a.name}"] if a.num_slices == 1 else [f"--node-count={a.num_slices}", f"--node-prefix={a.name}"]
  else:
    c = ["gcloud", "compute", "tpus", "tpu-vm", "create", a.name, *_where(a), f"--accelerator-type={acc.name}",
         f"--version={version}"]
  return [c + (["--spot"] if a.spot else [])]


def cmd_setup(a) -> list:
  tarball = os.path.join(tempfile.gettempdir(), "kforcing_jax_code.tgz")
  out = [["tar", "czf", tarball, "-C", REPO, "--exclude=.git", "--exclude=*.egg-info", "--exclude=__pycache__",
          "--exclude=venv", "."]]
  remote = (f"mkdir -p {REMOTE_DIR} && tar xzf ~/kforcing_jax_code.tgz -C {REMOTE_DIR} && "
            f"bash {REMOTE_DIR}/launch/run_tpu.sh --setup_only")
  for node in _nodes(a):
    out.append(["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, f"{node}:~/kforcing_jax_code.tgz",
                *_where(a), "--worker=all"])
    out.append(_ssh(a, node, remote))
  return out


def stamped_workdir(workdir: str, stamp: bool, now: Optional[datetime.datetime] = None) -> str:
  """`WORKDIR/<mm-dd_HHMM>` (computed once, here, so that every worker writes to the same place)."""
  if not stamp:
    return workdir.rstrip("/")
  return f"{workdir.rstrip('/')}/{(now or datetime.datetime.now()).strftime('%m-%d_%H%M')}"


def cmd_run(a) -> list:
  acc = parse_accelerator(a.accelerator_type)
  env = [f"KFJ_DISTRIBUTED={'auto' if acc.hosts * a.num_slices > 1 else 'off'}"] + list(a.env)
  log = f"{LOG_DIR}/{os.path.basename(a.final_workdir)}.log"
  train = shlex.join(["bash", "launch/run_tpu.sh", f"--config={a.config}", f"--workdir={a.final_workdir}",
                      *a.trainer_args])
  # Detached (setsid + nohup) so that ssh returns and a dropped connection does not kill the run; the pid file is
  # the process group `stop` signals.
  remote = (f"cd {REMOTE_DIR} && mkdir -p {LOG_DIR} && (setsid nohup env {' '.join(map(shlex.quote, env))} "
            f"{train} > {log} 2>&1 < /dev/null & echo $! > {LOG_DIR}/train.pid) && ln -sf {log} {LOG_DIR}/latest.log")
  return [_ssh(a, node, remote) for node in _nodes(a)]


def cmd_logs(a) -> list:
  tail = f"tail -n {a.lines}{' -f' if a.follow else ''} {LOG_DIR}/latest.log"
  return [_ssh(a, _nodes(a)[0], tail, worker=str(a.worker))]


def cmd_stop(a) -> list:
  remote = f"test -f {LOG_DIR}/train.pid && kill -TERM -- -$(cat {LOG_DIR}/train.pid) 2>/dev/null; true"
  return [_ssh(a, node, remote) for node in _nodes(a)]


def cmd_delete(a) -> list:
  if a.queued:
    return [["gcloud", "compute", "tpus", "queued-resources", "delete", a.name, *_where(a), "--force", "--quiet"]]
  return [["gcloud", "compute", "tpus", "tpu-vm", "delete", a.name, *_where(a), "--quiet"]]


# ----------------------------------------------------------------------------------------------------------------
# local: N processes on 127.0.0.1 (what the multi-process tests run; also a workstation smoke test).
# ----------------------------------------------------------------------------------------------------------------
def local_env(i: int, a, port) -> dict:
  """Environment of local process i: explicit KFJ_* coordinates and `devices_per_process` fake CPU devices."""
  env = dict(os.environ, KFJ_COORDINATOR=f"127.0.0.1:{port}", KFJ_NUM_PROCESSES=str(a.num_processes),
             KFJ_PROCESS_ID=str(i), KFJ_HEARTBEAT_TIMEOUT=str(a.heartbeat_timeout),
             KFJ_INIT_TIMEOUT=str(a.init_timeout))
  env.pop("KFJ_DISTRIBUTED", None)
  if a.devices_per_process > 0:
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={a.devices_per_process}"])
    env.setdefault("JAX_PLATFORMS", "cpu")
  return env


def cmd_local(a, port: int) -> list:
  return [[sys.executable, "-m", "kforcing_jax.train", f"--config={a.config}", f"--workdir={a.final_workdir}",
           *a.trainer_args] for _ in range(a.num_processes)]


def run_local(a) -> int:
  """Starts the processes, waits up to `--timeout` s; on the first failure or the timeout, kills the rest.

  Returns:
    0 if all exited 0, else the first non-zero status (124 on timeout).
  """
  import portpicker
  port = portpicker.pick_unused_port()
  log_dir = a.log_dir or tempfile.mkdtemp(prefix="kfj_local_")
  os.makedirs(log_dir, exist_ok=True)
  procs, logs = [], []
  try:
    for i, argv in enumerate(cmd_local(a, port)):
      logs.append(open(os.path.join(log_dir, f"process_{i}.log"), "wb"))
      procs.append(subprocess.Popen(argv, env=local_env(i, a, port), cwd=REPO, stdout=logs[-1],
                                    stderr=subprocess.STDOUT, start_new_session=True))
    deadline = time.monotonic() + a.timeout
    status = None
    while status is None:
      codes = [p.poll() for p in procs]
      bad = [c for c in codes if c not in (None, 0)]
      if bad:
        status = bad[0]
      elif all(c == 0 for c in codes):
        status = 0
      elif time.monotonic() > deadline:
        status = 124
        print(f"error: local run exceeded --timeout={a.timeout}s; killed (logs in {log_dir})", file=sys.stderr)
      else:
        time.sleep(0.2)
    if status not in (0, 124):
      print(f"error: a process exited with status {status} (logs in {log_dir})", file=sys.stderr)
    return status
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    for f in logs:
      f.close()
    print(f"logs: {log_dir}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="launch/tpu.py", description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest="cmd", required=True)

  def gcloud(name, help_):
    s = sub.add_parser(name, help=help_)
    s.add_argument("--name", required=True, help="TPU VM / queued resource name")
    s.add_argument("--zone", default=os.environ.get("CLOUDSDK_COMPUTE_ZONE"))
    s.add_argument("--project", default=os.environ.get("CLOUDSDK_CORE_PROJECT"))
    s.add_argument("--num_slices", type=int, default=1, help="multislice: slices of one queued resource")
    s.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    return s

  c = gcloud("create", "create a TPU VM (or a queued resource)")
  c.add_argument("--accelerator_type", required=True)
  c.add_argument("--runtime_version", default=None, help="default: the family's recommended TPU VM image")
  c.add_argument("--spot", action="store_true")
  c.add_argument("--queued", action="store_true", help="create through queued resources (needed for multislice)")
  c.add_argument("--config", default=None, help="optional: check this config's mesh and batch before creating")
  gcloud("setup", "copy the code to every worker and build the venv there (once; idempotent)")
  r = gcloud("run", "start training on every worker (detached)")
  r.add_argument("--accelerator_type", required=True, help="to check the config's mesh and batch")
  r.add_argument("--config", required=True)
  r.add_argument("--workdir", required=True, help="gs://BUCKET/PATH; a <mm-dd_HHMM> subfolder is appended")
  r.add_argument("--no_stamp", action="store_true", help="use --workdir as is (resume a run)")
  r.add_argument("--env", action="append", default=[], help="KEY=VALUE for the trainer's environment (repeat)")
  lg = gcloud("logs", "print the newest run's log of one worker")
  lg.add_argument("--worker", type=int, default=0)
  lg.add_argument("--lines", type=int, default=100)
  lg.add_argument("--follow", action="store_true")
  gcloud("stop", "kill the running training on every worker (the VM stays)")
  d = gcloud("delete", "delete the TPU VM (or queued resource)")
  d.add_argument("--queued", action="store_true")

  loc = sub.add_parser("local", help="N processes on this machine over 127.0.0.1")
  loc.add_argument("--num_processes", type=int, default=2)
  loc.add_argument("--devices_per_process", type=int, default=2, help="fake CPU devices per process (0: leave)")
  loc.add_argument("--config", required=True)
  loc.add_argument("--workdir", required=True)
  loc.add_argument("--timeout", type=float, default=600.0, help="seconds before every process is killed")
  loc.add_argument("--heartbeat_timeout", type=int, default=10, help="seconds before a silent peer counts as dead")
  loc.add_argument("--init_timeout", type=int, default=60)
  loc.add_argument("--log_dir", default=None)
  loc.add_argument("--dry_run", action="store_true")
  return p


def parse(argv: Sequence[str]):
  """Parses and validates argv (trainer arguments go after `--`). Raises UsageError on bad input."""
  argv = list(argv)
  # --dry_run anywhere, even after `--`, means dry run: a misplaced flag must never launch anything.
  dry_run = "--dry_run" in argv
  argv = [x for x in argv if x != "--dry_run"]
  trainer_args = []
  if "--" in argv:
    k = argv.index("--")
    argv, trainer_args = argv[:k], argv[k + 1:]
  parser = build_parser()
  try:
    a = parser.parse_args(argv)
  except SystemExit as e:  # argparse already printed its one line (exit 2) or the help (exit 0)
    raise SystemExit(e.code)
  a.trainer_args = trainer_args
  a.dry_run = dry_run
  if a.cmd != "local":
    missing = [f"--{k}" for k in ("zone", "project") if not getattr(a, k)]
    if missing:
      raise UsageError(f"missing {' and '.join(missing)} (or set CLOUDSDK_COMPUTE_ZONE / CLOUDSDK_CORE_PROJECT)")
    if not re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", a.name):
      raise UsageError(f"--name {a.name!r}: lowercase letters, digits and '-', starting with a letter")
    if a.num_slices < 1:
      raise UsageError(f"--num_slices={a.num_slices} must be >= 1")
    if a.num_slices > 1 and a.cmd in ("create", "delete") and not a.queued:
      raise UsageError("--num_slices > 1 needs --queued (multislice runs on queued resources)")
  if a.cmd in ("create", "run"):
    acc = parse_accelerator(a.accelerator_type)
    if a.config:
      cfg = load_config(a.config, trainer_args)
      check_config(cfg, acc.devices * a.num_slices, acc.hosts * a.num_slices, a.num_slices)
  if a.cmd == "run":
    for e in a.env:
      if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", e):
        raise UsageError(f"--env {e!r} is not KEY=VALUE")
    check_workdir(a.workdir, multi_host=acc.hosts * a.num_slices > 1)
    a.final_workdir = stamped_workdir(a.workdir, not a.no_stamp)
  if a.cmd == "local":
    if a.num_processes < 1:
      raise UsageError(f"--num_processes={a.num_processes} must be >= 1")
    cfg = load_config(a.config, trainer_args)
    devices = a.devices_per_process * a.num_processes if a.devices_per_process > 0 else None
    if devices:
      check_config(cfg, devices, a.num_processes)
    check_workdir(a.workdir, multi_host=False)
    a.final_workdir = a.workdir
  return a


def commands(a) -> list:
  """The commands a parsed invocation runs, in order."""
  return {"create": cmd_create, "setup": cmd_setup, "run": cmd_run, "logs": cmd_logs, "stop": cmd_stop,
          "delete": cmd_delete, "local": lambda a: cmd_local(a, 0)}[a.cmd](a)


def main(argv: Optional[Sequence[str]] = None) -> int:
  try:
    a = parse(sys.argv[1:] if argv is None else argv)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if a.dry_run:
    if a.cmd == "local":
      for i, argv_i in enumerate(commands(a)):
        env = {k: v for k, v in local_env(i, a, "PORT").items() if k.startswith("KFJ_") or k == "XLA_FLAGS"}
        print(shlex.join(["env", *[f"{k}={v}" for k, v in sorted(env.items())], *argv_i]))
    else:
      for c in commands(a):
        print(shlex.join(c))
    return 0
  if a.cmd == "local":
    return run_local(a)
  for c in commands(a):
    print("+", shlex.join(c), flush=True)
    rc = subprocess.call(c)
    if rc:
      print(f"error: command failed with status {rc}: {shlex.join(c)[:200]}", file=sys.stderr)
      return rc
  if a.cmd == "run":
    print(f"workdir: {a.final_workdir}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
