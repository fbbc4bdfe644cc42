"""Scale-out: parallelism presets on 8 fake devices (in-process) and real multi-process runs on 127.0.0.1.

The multi-process tests start `python -m kforcing_jax.train` as 2 processes x 2 CPU devices joined by
jax.distributed (gloo collectives), one pair at a time, each bounded by a timeout and killed in a `finally`.
"""
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import portpicker
import pytest

from kforcing_jax.models import KForcingLM, ModelConfig
from kforcing_jax import workdir as checkpoint
from kforcing_jax.training import distributed, mesh_presets, sharding
from helpers import tiny_config


# ---------------------------------------------------------------------------------------------------------------
# Presets and meshes (no training; the trainer runs with each preset are at the end of the file).
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, want", [("dp", (None, None)), ("fsdp", ("fsdp", None)), ("tp", (None, "model")),
                                        ("fsdp_tp", ("fsdp", "model"))])
def test_preset_rules_shard_the_weights_as_named(name, want):
  p = mesh_presets.preset(name, model_parallel=1 if name in ("dp", "fsdp") else 2)
  model = KForcingLM(tiny_config(vocab_size=64, k_max=0))
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32),
                                               method=model.init_all))
  mesh = sharding.make_mesh(p["mesh"])
  shardings = sharding.shardings_for(abstract, mesh, p["sharding_rules"])["params"]
  spec = tuple(shardings["block_0"]["mlp_in"]["kernel"].spec)  # logical ("embed", "mlp")
  assert spec + (None,) * (2 - len(spec)) == want
  assert sharding.batch_sharding(mesh, p["sharding_rules"], 2).spec[0] == ("data", "fsdp")


def test_hybrid_mesh_puts_dcn_outermost():
  as_dict = {"ici": [("data", -1), ("model", 2)], "dcn": [("data", 2)]}
  as_list = [("data", -1, 2), ("model", 2, 1)]  # the form that fits the list-typed config.mesh
  ids = []
  for spec in (as_dict, as_list):
    mesh = sharding.make_mesh(spec)
    assert dict(mesh.shape) == {"data": 4, "model": 2}
    ids.append(np.vectorize(lambda d: d.id)(mesh.devices))
  np.testing.assert_array_equal(ids[0], ids[1])
  # The first half of the data axis is granule 0 (devices 0..3), the second half granule 1 (devices 4..7).
  assert set(ids[0][:2].ravel()) == {0, 1, 2, 3} and set(ids[0][2:].ravel()) == {4, 5, 6, 7}


@pytest.mark.parametrize("spec, rules, batch, procs, msg", [
    ([("data", -1), ("model", 3)], mesh_presets.RULES["tp"], 8, 1, "does not divide 8 devices"),
    ([("data", -1)], [("batch", "data")], 12, 1, "not divisible by the data axes"),
    ([("data", 2), ("fsdp", 4)], mesh_presets.RULES["fsdp"], 4, 1, "not divisible by the data axes"),
    ([("data", -1)], [("batch", "data")], 8, 3, "not divisible by the 3 processes"),
    ({"ici": [("data", -1)], "dcn": [("data", 4)]}, [("batch", "data")], 8, 1, "spans 4 slices"),
    ({"ici": [("data", -1)], "dcn": [("fsdp", 2)]}, [("batch", "data")], 8, 1, "not in the ici mesh"),
])
def test_bad_mesh_or_batch_is_one_clear_error(spec, rules, batch, procs, msg):
  with pytest.raises(ValueError, match=msg):
    granules = 2 if mesh_presets.is_hybrid(spec) else 1
    mesh_presets.check_batch(batch, mesh_presets.resolve_sizes(spec, 8, granules), rules, procs)


def test_spec_from_env():
  assert distributed.spec_from_env({}).mode == "single"
  s = distributed.spec_from_env({"KFJ_COORDINATOR": "10.0.0.2:1234", "KFJ_NUM_PROCESSES": "4",
                                 "KFJ_PROCESS_ID": "3", "KFJ_HEARTBEAT_TIMEOUT": "7"})
  assert (s.mode, s.coordinator_address, s.num_processes, s.process_id, s.heartbeat_timeout) == (
      "explicit", "10.0.0.2:1234", 4, 3, 7)
  assert distributed.spec_from_env({"KFJ_DISTRIBUTED": "auto"}).mode == "auto"
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2", "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0"}
  assert distributed.spec_from_env(slurm).mode == "auto"
  assert distributed.spec_from_env(dict(slurm, SLURM_NTASKS="1")).mode == "single"
  assert distributed.spec_from_env(dict(slurm, KFJ_DISTRIBUTED="off")).mode == "single"
  for env, msg in [({"KFJ_COORDINATOR": "h:1"}, "missing"),
                   ({"KFJ_COORDINATOR": "h", "KFJ_NUM_PROCESSES": "2", "KFJ_PROCESS_ID": "0"}, "host:port"),
                   ({"KFJ_COORDINATOR": "h:1", "KFJ_NUM_PROCESSES": "2", "KFJ_PROCESS_ID": "2"}, "must be <"),
                   ({"KFJ_COORDINATOR": "h:1", "KFJ_NUM_PROCESSES": "x", "KFJ_PROCESS_ID": "0"}, "not an integer"),
                   ({"KFJ_DISTRIBUTED": "yes"}, "expected 'auto'")]:
    with pytest.raises(ValueError, match=msg):
      distributed.spec_from_env(env)


def test_single_process_helpers():
  assert distributed.initialize(distributed.spec_from_env({})).mode == "single"
  assert distributed.is_main_process()
  distributed.sync("noop")
  np.testing.assert_allclose(distributed.host_mean({"a": 2.0})["a"], 2.0)
  mesh = sharding.make_mesh([("data", -1)])
  x = distributed.global_batch({"t": np.arange(16).reshape(8, 2)},
                               lambda nd: sharding.batch_sharding(mesh, [("batch", "data")], nd))
  np.testing.assert_array_equal(np.asarray(x["t"]), np.arange(16).reshape(8, 2))
  assert len(x["t"].sharding.device_set) == 8


# ---------------------------------------------------------------------------------------------------------------
# Multi-process: the real trainer, 2 processes x 2 CPU devices vs 1 process x 4 devices, on 127.0.0.1.
# ---------------------------------------------------------------------------------------------------------------
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT_S = 240  # per run; a healthy run takes ~30-60 s on a busy 2-core machine
ENTRY = ["-m", "kforcing_jax.train"]
DEAD_PEER_TIMEOUT_S = 60  # process 0 must be gone this long after process 1 was killed (heartbeat: 5 s)


def _overrides(data_dir, steps=4, **over):
  # A constant learning rate after one warmup step, so that a 4-step run is a prefix of a 6-step run.
  cfg = {"num_steps": steps, "log_every": 1, "eval_every": 2, "eval_batches": 1, "checkpoint_every": 2,
         "model.num_layers": 1, "model.d_model": 32, "model.num_heads": 2, "model.mlp_dim": 64,
         # BPE (trained by every process, saved by process 0) as in real runs, with a small vocabulary.
         "model.vocab_size": 512, "data.tokenizer": "bpe", "data.vocab_size": 512, "data.max_bytes": 100_000,
         "data.data_dir": data_dir,
         "seq_len": 16, "batch_size": 8, "optim.warmup_steps": 1, "optim.lr": 0.01, "optim.schedule": "constant",
         "progress_bar": False}
  cfg.update(over)
  return cfg


def _trainer_args(workdir, data_dir, steps=4, **over):
  cfg = _overrides(data_dir, steps, **over)
  return (ENTRY + ["--config=experiments/configs/tiny_cpu.py:stage=ar", f"--workdir={workdir}"]
          + [f"--config.{k}={v}" for k, v in cfg.items()])


def _start(args, num_processes, devices_per_process, log_dir, heartbeat_s=10):
  """Starts the processes (own session each, so a kill takes their children too); returns (procs, log paths)."""
  port = portpicker.pick_unused_port()
  os.makedirs(log_dir, exist_ok=True)
  procs, logs = [], []
  # Runs of one topology share compiled programs through a persistent cache beside the logs.
  cache = os.path.join(os.path.dirname(log_dir), f"jax_cache_{num_processes}x{devices_per_process}")
  for i in range(num_processes):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
               JAX_PLATFORMS="cpu", KFJ_HEARTBEAT_TIMEOUT=str(heartbeat_s), KFJ_INIT_TIMEOUT="120",
               JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    for k in ("KFJ_COORDINATOR", "KFJ_NUM_PROCESSES", "KFJ_PROCESS_ID", "KFJ_DISTRIBUTED"):
      env.pop(k, None)
    if num_processes > 1:
      env.update(KFJ_COORDINATOR=f"127.0.0.1:{port}", KFJ_NUM_PROCESSES=str(num_processes), KFJ_PROCESS_ID=str(i))
    logs.append(os.path.join(log_dir, f"process_{i}.log"))
    with open(logs[-1], "wb") as f:
      procs.append(subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True))
  return procs, logs


def _kill(procs):
  for p in procs:
    if p.poll() is None:
      os.killpg(p.pid, signal.SIGKILL)
    p.wait()


def _tail(path, n=15):
  with open(path, errors="replace") as f:
    return "".join(f.readlines()[-n:])


def _run(args, num_processes, devices_per_process, log_dir):
  procs, logs = _start(args, num_processes, devices_per_process, log_dir)
  try:
    for p, log in zip(procs, logs):
      rc = p.wait(timeout=RUN_TIMEOUT_S)
      assert rc == 0, f"{log} exited {rc}:\n{_tail(log)}"
  finally:
    _kill(procs)


def _run_with_launcher(workdir, data_dir, steps, log_dir):
  """2 processes x 2 devices through `launch/tpu.py local`, which kills every process when one fails."""
  cmd = [sys.executable, "launch/tpu.py", "local", "--num_processes=2", "--devices_per_process=2",
         "--config=experiments/configs/tiny_cpu.py:stage=ar", f"--workdir={workdir}", f"--log_dir={log_dir}",
         f"--timeout={RUN_TIMEOUT_S}", "--"] + [f"--config.{k}={v}" for k, v in _overrides(data_dir, steps).items()]
  r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S + 60,
                     env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert r.returncode == 0, r.stderr[-1500:] + _tail(os.path.join(log_dir, "process_0.log"))


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  train = {r["step"]: r["loss"] for r in rows if r["split"] == "train"}
  evals = {r["step"]: r["loss"] for r in rows if r["split"] == "eval"}
  return train, evals


def _run_and_kill_peer(args, log_dir, workdir):
  """2 processes x 2 devices; once process 0 logged a train step, SIGKILL process 1 and time process 0's exit."""
  procs, logs = _start(args, 2, 2, log_dir, heartbeat_s=5)
  try:
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (os.path.exists(metrics) and '"split": "train"' in open(metrics).read()):
      assert time.monotonic() < deadline and procs[0].poll() is None, _tail(logs[0])
      time.sleep(0.2)
    os.killpg(procs[1].pid, signal.SIGKILL)
    t0 = time.monotonic()
    try:
      rc = procs[0].wait(timeout=DEAD_PEER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
      rc = None  # hung: the test fails on it
    with open(logs[0], errors="replace") as f:
      return {"rc": rc, "exit_s": time.monotonic() - t0, "log": f.read()}
  finally:
    _kill(procs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The multi-process runs, once per module, one at a time:
    w1  1 process x 4 devices, 6 steps (checkpoints at 2, 4, 6)
    w2  2 processes x 2 devices, the same config, 4 steps (started by `launch/tpu.py local`)
    w5  a copy of w2 resumed to step 6 by 2 processes (params, optimizer, RNG and both data iterators restored)
    w4  2 processes x 2 devices starting from w1's checkpoint (config.init_workdir), process 1 killed mid-run
  """
  root = tmp_path_factory.mktemp("multihost")
  data_dir = str(root / "data")
  out = {name: str(root / name) for name in ("w1", "w2", "w4", "w5")}
  out["root"] = root
  _run(_trainer_args(out["w1"], data_dir, steps=6), 1, 4, str(root / "logs_w1"))
  _run_with_launcher(out["w2"], data_dir, 4, str(root / "logs_w2"))
  shutil.copytree(out["w2"], out["w5"])
  _run(_trainer_args(out["w5"], data_dir, steps=6), 2, 2, str(root / "logs_w5"))
  args = _trainer_args(out["w4"], data_dir, steps=100_000, init_workdir=out["w1"], eval_every=10**6,
                       checkpoint_every=10**6)
  out["dead_peer"] = _run_and_kill_peer(args, str(root / "logs_w4"), out["w4"])
  return out


@pytest.mark.slow
def test_two_processes_match_one_process(runs):
  train1, eval1 = _metrics(runs["w1"])
  train2, eval2 = _metrics(runs["w2"])
  assert sorted(train2) == [1, 2, 3, 4]
  assert train1[4] < train1[1] - 0.1  # it trains (the loss moves), so equality below means something
  np.testing.assert_allclose([train2[s] for s in range(1, 5)], [train1[s] for s in range(1, 5)], rtol=1e-5)
  np.testing.assert_allclose([eval2[s] for s in (0, 2, 4)], [eval1[s] for s in (0, 2, 4)], rtol=1e-5)
  # Only process 0 writes: one row per step, not two.
  with open(os.path.join(runs["w2"], "metrics.jsonl")) as f:
    assert sum(1 for line in f if '"split": "train"' in line) == 4


@pytest.mark.slow
def test_two_processes_resume_exactly(runs):
  # Preemption on a pod: all hosts restart from the newest checkpoint and continue as if nothing happened.
  train1, eval1 = _metrics(runs["w1"])
  train5, eval5 = _metrics(runs["w5"])
  np.testing.assert_allclose([train5[5], train5[6], eval5[6]], [train1[5], train1[6], eval1[6]], rtol=1e-5)


def _restore_params(workdir, mesh_spec, step):
  _, meta = checkpoint.read_meta(workdir)
  model = KForcingLM(ModelConfig.from_dict(meta["model"]))
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32),
                                               method=model.init_all))
  mesh = sharding.make_mesh(mesh_spec)
  shardings = sharding.shardings_for(abstract, mesh, sharding.DEFAULT_RULES)["params"]
  step, out = checkpoint.restore(workdir, step=step, abstract_params=checkpoint.to_abstract(nn.unbox(abstract)["params"],
                                                                                   shardings))
  return step, out["params"]


@pytest.mark.slow
def test_checkpoint_written_by_two_processes_restores_in_one(runs):
  # This pytest process is one process with 8 devices, laid out (data=4, model=2): a third topology.
  _, p1 = _restore_params(runs["w1"], [("data", -1), ("model", 2)], step=4)
  _, p2 = _restore_params(runs["w2"], [("data", -1), ("model", 2)], step=4)
  # Not bitwise: the two runs sum gradients in different orders, and Adam turns float noise in near-zero gradients
  # into differences of up to ~1e-5 (lr = 1e-2 per step); a wrong or misplaced shard would be off by O(lr) or more.
  chex.assert_trees_all_close(p2, p1, rtol=1e-4, atol=2e-5)
  assert p2["head"]["kernel"].sharding.spec == jax.sharding.PartitionSpec(None, "model")


@pytest.mark.slow
def test_checkpoint_written_by_one_process_restores_in_two(runs):
  # The two processes of w4 started from w1's params: their step-0 eval is w1's final eval, to float precision.
  _, eval1 = _metrics(runs["w1"])
  _, eval4 = _metrics(runs["w4"])
  np.testing.assert_allclose(eval4[0], eval1[6], rtol=1e-5)


@pytest.mark.slow
def test_dead_peer_makes_the_survivor_exit(runs):
  r = runs["dead_peer"]
  print(f"survivor exited with status {r['rc']} {r['exit_s']:.1f} s after its peer was killed")
  assert r["rc"] is not None, f"process 0 still running {DEAD_PEER_TIMEOUT_S} s after process 1 died"
  assert r["rc"] != 0
  assert re.search(r"another task died|stopped sending heartbeats", r["log"]), r["log"][-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("strategy, model_parallel, num_slices", [
    ("dp", 1, 1), ("fsdp", 1, 1), ("tp", 2, 1), ("fsdp_tp", 2, 2)])
def test_trainer_with_each_preset_matches(runs, tmp_path, strategy, model_parallel, num_slices):
  # The real trainer, in this process (8 devices), with config.mesh / config.sharding_rules from a preset; the last
  # case is a hybrid mesh of two emulated slices x (fsdp=2, model=2). Same losses as w1's first 4 steps (1 process,
  # 4 devices, the default data-parallel mesh).
  from kforcing_jax.training import train
  spec = importlib.util.spec_from_file_location("tiny_cpu_cfg", os.path.join(REPO, "experiments/configs/tiny_cpu.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config("stage=ar")
  p = mesh_presets.preset(strategy, model_parallel=model_parallel, num_slices=num_slices)
  with config.unlocked():
    for key, value in _overrides(str(runs["root"] / "data")).items():
      *parents, leaf = key.split(".")
      node = config
      for name in parents:
        node = node[name]
      node[leaf] = value
    config.mesh = p["mesh"]
    config.sharding_rules = p["sharding_rules"]
  workdir = str(tmp_path / strategy)
  train.train_and_evaluate(config, workdir)
  train1, eval1 = _metrics(runs["w1"])
  train_p, eval_p = _metrics(workdir)
  np.testing.assert_allclose([train_p[s] for s in range(1, 5)], [train1[s] for s in range(1, 5)], rtol=1e-5)
  np.testing.assert_allclose(eval_p[4], eval1[4], rtol=1e-5)


@pytest.mark.slow
def test_missing_peer_is_a_bounded_wait(tmp_path):
  # Process 0 of 2 whose peer never starts gives up after KFJ_INIT_TIMEOUT instead of waiting forever.
  env = dict(os.environ, KFJ_COORDINATOR=f"127.0.0.1:{portpicker.pick_unused_port()}", KFJ_NUM_PROCESSES="2",
             KFJ_PROCESS_ID="0", KFJ_INIT_TIMEOUT="2", JAX_PLATFORMS="cpu")
  code = "from kforcing_jax.training import distributed; distributed.initialize_from_env(); print('joined')"
  r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=DEAD_PEER_TIMEOUT_S)
  assert r.returncode != 0 and "joined" not in r.stdout
  assert "DEADLINE_EXCEEDED" in r.stderr or "Deadline Exceeded" in r.stderr, r.stderr[-2000:]


_HELPERS_SCRIPT = """
import json, sys
import numpy as np
from kforcing_jax.training import distributed, sharding
spec = distributed.initialize_from_env()
import jax
i = jax.process_index()
mesh = sharding.make_mesh([("data", -1)])
rows = np.arange(8).reshape(4, 2) + 8 * i                      # process i holds global rows 4i..4i+3
x = distributed.global_batch({"t": rows}, lambda nd: sharding.batch_sharding(mesh, [("batch", "data")], nd))["t"]
total = float(jax.jit(lambda a: a.sum(), out_shardings=sharding.replicated(mesh))(x))
distributed.sync("helpers")
print(json.dumps({"mode": spec.mode, "main": distributed.is_main_process(), "shape": list(x.shape), "sum": total,
                  "mean": float(distributed.host_mean({"v": float(i)})["v"])}))
distributed.shutdown()
"""


@pytest.mark.slow
def test_distributed_helpers_across_two_processes(tmp_path):
  procs, logs = _start(["-c", _HELPERS_SCRIPT], 2, 2, str(tmp_path))
  try:
    for p, log in zip(procs, logs):
      assert p.wait(timeout=RUN_TIMEOUT_S) == 0, _tail(log)
  finally:
    _kill(procs)
  outs = []
  for log in logs:
    with open(log) as f:
      outs.append(json.loads([line for line in f if line.startswith("{")][-1]))
  assert [o["main"] for o in outs] == [True, False]
  for o in outs:
    assert o["mode"] == "explicit" and o["shape"] == [8, 2]
    assert o["sum"] == float(np.arange(16).sum()) and o["mean"] == 0.5
