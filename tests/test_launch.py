"""launch/: the TPU launcher's commands (--dry_run), its input checks, and the GPU / venv shell recipes."""
import hashlib
import importlib.util
import os
import subprocess
import sys
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("launch_tpu", os.path.join(REPO, "launch", "tpu.py"))
tpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tpu)

WHERE = ["--name", "kf", "--zone", "us-central2-b", "--project", "proj"]
CFG = "experiments/configs/tiny_cpu.py:stage=ar"


@pytest.fixture(autouse=True)
def no_commands_run(monkeypatch):
  """Dry runs must never start anything; any gcloud / subprocess call fails the test."""
  for k in ("CLOUDSDK_COMPUTE_ZONE", "CLOUDSDK_CORE_PROJECT"):
    monkeypatch.delenv(k, raising=False)

  def boom(*a, **k):
    raise AssertionError(f"a command ran during a dry run: {a}")
  monkeypatch.setattr(tpu, "subprocess", types.SimpleNamespace(call=boom, Popen=boom, run=boom))


def dry(capsys, *argv):
  rc = tpu.main(list(argv) + ["--dry_run"])
  out = capsys.readouterr()
  assert rc == 0, out.err
  return out.out.strip().splitlines()


def error(capsys, *argv):
  rc = tpu.main(list(argv) + ["--dry_run"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


@pytest.mark.parametrize("name, chips, devices, hosts", [
    ("v4-8", 4, 4, 1), ("v4-32", 16, 16, 4), ("v5p-8", 4, 4, 1), ("v5p-128", 64, 64, 16),
    ("v5litepod-8", 8, 8, 1), ("v5litepod-16", 16, 16, 4), ("v6e-8", 8, 8, 1), ("v6e-64", 64, 64, 16),
    ("v3-32", 16, 32, 4), ("v2-8", 4, 8, 1)])
def test_accelerator_table(name, chips, devices, hosts):
  acc = tpu.parse_accelerator(name)
  assert (acc.chips, acc.devices, acc.hosts) == (chips, devices, hosts)


def test_create(capsys):
  assert dry(capsys, "create", *WHERE, "--accelerator_type", "v4-32", "--config", CFG) == [
      "gcloud compute tpus tpu-vm create kf --zone=us-central2-b --project=proj --accelerator-type=v4-32 "
      "--version=tpu-ubuntu2204-base"]
  assert dry(capsys, "create", *WHERE, "--accelerator_type", "v5litepod-16", "--spot", "--queued") == [
      "gcloud compute tpus queued-resources create kf --zone=us-central2-b --project=proj "
      "--accelerator-type=v5litepod-16 --runtime-version=v2-alpha-tpuv5-lite --node-id=kf --spot"]
  assert dry(capsys, "create", *WHERE, "--accelerator_type", "v6e-16", "--queued", "--num_slices", "2") == [
      "gcloud compute tpus queued-resources create kf --zone=us-central2-b --project=proj "
      "--accelerator-type=v6e-16 --runtime-version=v2-alpha-tpuv6e --node-count=2 --node-prefix=kf"]


def test_setup(capsys):
  lines = dry(capsys, "setup", *WHERE)
  assert lines[0].startswith("tar czf ") and "--exclude=.git" in lines[0]
  assert lines[1].startswith("gcloud compute tpus tpu-vm scp ") and lines[1].endswith(
      "'kf:~/kforcing_jax_code.tgz' --zone=us-central2-b --project=proj --worker=all")
  assert lines[2] == ("gcloud compute tpus tpu-vm ssh kf --zone=us-central2-b --project=proj --worker=all "
                      "'--command=mkdir -p ~/kforcing_jax && tar xzf ~/kforcing_jax_code.tgz -C ~/kforcing_jax && "
                      "bash ~/kforcing_jax/launch/run_tpu.sh --setup_only'")


def test_run(capsys):
  lines = dry(capsys, "run", *WHERE, "--accelerator_type", "v4-32", "--config", CFG, "--workdir", "gs://bkt/kf/ar",
              "--no_stamp", "--env", "XLA_PYTHON_CLIENT_MEM_FRACTION=.9", "--", "--config.num_steps=100")
  assert lines == [
      "gcloud compute tpus tpu-vm ssh kf --zone=us-central2-b --project=proj --worker=all '--command=cd "
      "~/kforcing_jax && mkdir -p ~/kfj_logs && (setsid nohup env KFJ_DISTRIBUTED=auto "
      "XLA_PYTHON_CLIENT_MEM_FRACTION=.9 bash launch/run_tpu.sh "
      "--config=experiments/configs/tiny_cpu.py:stage=ar --workdir=gs://bkt/kf/ar --config.num_steps=100 "
      "> ~/kfj_logs/ar.log 2>&1 < /dev/null & echo $! > ~/kfj_logs/train.pid) && "
      "ln -sf ~/kfj_logs/ar.log ~/kfj_logs/latest.log'"]
  # Default: one date stamp, computed here so that every worker gets the same workdir; single host: no distributed.
  (line,) = dry(capsys, "run", *WHERE, "--accelerator_type", "v5litepod-8", "--config", CFG, "--workdir",
                "gs://bkt/kf/")
  assert "KFJ_DISTRIBUTED=off" in line
  stamp = line.split("--workdir=gs://bkt/kf/")[1].split()[0]
  assert len(stamp) == len("11-25_2203") and stamp[2] == "-" and stamp[5] == "_"


def test_multislice_runs_on_every_slice(capsys):
  lines = dry(capsys, "run", *WHERE, "--num_slices", "2", "--accelerator_type", "v5litepod-16", "--config", CFG,
              "--workdir", "gs://bkt/x", "--no_stamp", "--", "--config.batch_size=32")
  assert [ln.split()[5] for ln in lines] == ["kf-0", "kf-1"]


def test_logs_stop_delete(capsys):
  assert dry(capsys, "logs", *WHERE, "--worker", "3", "--follow") == [
      "gcloud compute tpus tpu-vm ssh kf --zone=us-central2-b --project=proj --worker=3 "
      "'--command=tail -n 100 -f ~/kfj_logs/latest.log'"]
  assert dry(capsys, "stop", *WHERE) == [
      "gcloud compute tpus tpu-vm ssh kf --zone=us-central2-b --project=proj --worker=all "
      "'--command=test -f ~/kfj_logs/train.pid && kill -TERM -- -$(cat ~/kfj_logs/train.pid) 2>/dev/null; true'"]
  assert dry(capsys, "delete", *WHERE) == [
      "gcloud compute tpus tpu-vm delete kf --zone=us-central2-b --project=proj --quiet"]
  assert dry(capsys, "delete", *WHERE, "--queued") == [
      "gcloud compute tpus queued-resources delete kf --zone=us-central2-b --project=proj --force --quiet"]


def test_local(capsys, tmp_path):
  lines = dry(capsys, "local", "--num_processes", "2", "--devices_per_process", "2", "--config", CFG,
              "--workdir", str(tmp_path / "w"), "--", "--config.num_steps=3")
  assert len(lines) == 2
  for i, line in enumerate(lines):
    assert (f"KFJ_COORDINATOR=127.0.0.1:PORT KFJ_HEARTBEAT_TIMEOUT=10 KFJ_INIT_TIMEOUT=60 KFJ_NUM_PROCESSES=2 "
            f"KFJ_PROCESS_ID={i} XLA_FLAGS=--xla_force_host_platform_device_count=2 ") in line
    assert line.endswith(f"-m kforcing_jax.train --config={CFG} --workdir={tmp_path / 'w'} --config.num_steps=3")


def test_dry_run_after_double_dash_is_still_a_dry_run(capsys):
  # A misplaced flag must never create a VM.
  rc = tpu.main(["delete", *WHERE, "--", "--dry_run"])
  assert rc == 0 and capsys.readouterr().out.startswith("gcloud compute tpus tpu-vm delete")


@pytest.mark.parametrize("argv, msg", [
    (["create", "--name", "kf", "--project", "p", "--accelerator_type", "v4-32"], "missing --zone"),
    (["create", "--name", "kf", "--zone", "z", "--accelerator_type", "v4-32"], "missing --project"),
    (["create", *WHERE, "--accelerator_type", "v4-30"], "multiples of 8 TensorCores"),
    (["create", *WHERE, "--accelerator_type", "tpu-32"], "unknown accelerator type"),
    (["create", *WHERE, "--accelerator_type", "v5litepod-12"], "power of two"),
    (["create", *WHERE, "--accelerator_type", "v4-32", "--config", CFG, "--", "--config.mesh=[['data',-1]]"],
     "cannot be overridden on the command line"),
    (["run", *WHERE, "--accelerator_type", "v5litepod-16", "--config", CFG, "--workdir", "gs://bkt/x", "--",
      "--config.batch_size=24"], "not divisible by the data axes"),
    (["run", *WHERE, "--accelerator_type", "v4-8", "--config", CFG, "--workdir", "gs://bkt/x", "--",
      "--config.batch_size=6"], "not divisible by the data axes"),
    (["run", *WHERE, "--accelerator_type", "v4-32", "--config", CFG, "--workdir", "gs://bkt/x", "--",
      "--config.num_devices=8"], "num_devices=8"),
    (["run", *WHERE, "--accelerator_type", "v4-32", "--config", CFG, "--workdir", "gs://Bad_Bucket/x"],
     "valid bucket name"),
    (["run", *WHERE, "--accelerator_type", "v4-32", "--config", CFG, "--workdir", "/tmp/run"], "use gs://"),
    (["run", *WHERE, "--accelerator_type", "v4-32", "--config", "experiments/configs/nope.py", "--workdir",
      "gs://bkt/x"], "not found"),
    (["run", *WHERE, "--accelerator_type", "v4-32", "--config", CFG, "--workdir", "gs://bkt/x", "--",
      "--config.nope=1"], "unknown config key nope"),
    (["run", *WHERE, "--accelerator_type", "v4-32", "--config", CFG, "--workdir", "gs://bkt/x", "--env", "1X=2"],
     "not KEY=VALUE"),
    (["create", "--name", "Bad_Name", "--zone", "z", "--project", "p", "--accelerator_type", "v4-8"], "--name"),
    (["create", *WHERE, "--accelerator_type", "v4-8", "--num_slices", "2"], "needs --queued"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, msg):
  assert msg in error(capsys, *argv)


@pytest.mark.parametrize("mesh, num_slices, msg", [
    ([["data", -1], ["model", 3]], 1, "does not divide 16 devices"),
    ([["data", 4]], 1, "needs 4 devices, have 16"),
    ([["data", -1, 2], ["model", 1, 1]], 1, "spans 2 slices but the job has 1"),
    ([["data", -1, 2], ["model", 2, 1]], 2, None),  # 2 slices x v4-32: 32 devices, data 16 x model 2
])
def test_config_mesh_must_fit_the_slice(capsys, tmp_path, mesh, num_slices, msg):
  cfg = tmp_path / "cfg.py"
  cfg.write_text("from kforcing_jax.training import config_lib\n\n\ndef get_config(arg=None):\n"
                 f"  c = config_lib.base_config()\n  c.mesh = {mesh!r}\n  c.batch_size = 32\n  return c\n")
  argv = ["run", *WHERE, "--accelerator_type", "v4-32", "--num_slices", str(num_slices), "--config", str(cfg),
          "--workdir", "gs://bkt/x"]
  if msg is None:
    assert len(dry(capsys, *argv)) == num_slices
  else:
    assert msg in error(capsys, *argv)


def test_strategy_config_arg_picks_a_mesh_preset(capsys):
  import importlib.util

  from kforcing_jax.training import config_lib, mesh_presets

  def get_config(name, arg):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "experiments", "configs", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)

  c = get_config("ar_owt", "strategy=fsdp_tp,model_parallel=2,num_slices=2")
  want = mesh_presets.preset("fsdp_tp", 2, 2)
  assert c.mesh == want["mesh"] and c.sharding_rules == want["sharding_rules"]
  assert get_config("ar_owt", "").mesh == config_lib.base_config().mesh
  for arg, msg in [("strategy=zero", "unknown strategy"), ("model_parallel=2", "need a strategy")]:
    with pytest.raises(ValueError, match=msg):
      get_config("pflm_lm1b", arg)
  # Through the launcher's config check: the preset fits 2 x v4-32, a model axis of 3 does not divide it.
  argv = ["run", *WHERE, "--accelerator_type", "v4-32", "--num_slices", "2", "--workdir", "gs://bkt/x", "--config"]
  assert len(dry(capsys, *argv, "experiments/configs/ar_owt.py:strategy=fsdp_tp,model_parallel=2,num_slices=2")) == 2
  assert "does not divide" in error(capsys, *argv, "experiments/configs/ar_owt.py:strategy=tp,model_parallel=3,"
                                    "num_slices=2")


def test_unwritable_local_workdir(capsys, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  msg = error(capsys, "local", "--config", CFG, "--workdir", str(blocker / "run"))
  assert "not writable" in msg


def test_cli_exit_status(tmp_path):
  r = subprocess.run([sys.executable, os.path.join(REPO, "launch", "tpu.py"), "create", "--name", "kf",
                      "--project", "p", "--accelerator_type", "v4-8", "--dry_run"],
                     capture_output=True, text=True, timeout=60, env=dict(os.environ, CLOUDSDK_COMPUTE_ZONE=""))
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [
      "error: missing --zone (or set CLOUDSDK_COMPUTE_ZONE / CLOUDSDK_CORE_PROJECT)"]


def test_gpu_ssh_recipe_sets_coordinates():
  r = subprocess.run(["bash", os.path.join(REPO, "launch", "gpu_ssh.sh"), "--dry_run", "--config", CFG,
                      "--workdir", "/shared/run"], capture_output=True, text=True, timeout=30,
                     env=dict(os.environ, KFJ_HOSTS="gpu0 gpu1 gpu2", KFJ_PORT="4321"))
  assert r.returncode == 0, r.stderr
  lines = r.stdout.strip().splitlines()
  assert [ln.split()[1] for ln in lines] == ["gpu0", "gpu1", "gpu2"]
  for i, line in enumerate(lines):
    assert f"KFJ_COORDINATOR=gpu0:4321\\ KFJ_NUM_PROCESSES=3\\ KFJ_PROCESS_ID={i}" in line
    assert "-m\\ kforcing_jax.train\\ --config\\ experiments/configs/tiny_cpu.py:stage=ar" in line


def _fake_bin(tmp_path, **scripts):
  """A bin/ of stand-in executables (bash scripts) to put first on PATH."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir(exist_ok=True)
  for name, body in scripts.items():
    (bin_dir / name).write_text("#!/bin/bash\n" + body)
    (bin_dir / name).chmod(0o755)
  return bin_dir


# Stands in for the venv's python: prints the coordinates it was given and its arguments.
_FAKE_PY = 'echo "$KFJ_COORDINATOR $KFJ_NUM_PROCESSES $KFJ_PROCESS_ID $*"\n'


def test_slurm_recipe_gives_each_task_its_coordinates(tmp_path):
  # srun runs the command once per task with SLURM_PROCID set; scontrol expands the node list.
  bin_dir = _fake_bin(tmp_path, python=_FAKE_PY, scontrol="printf 'nodeA\\nnodeB\\n'\n",
                      srun='while [[ "$1" == --* ]]; do shift; done\n'
                           'for i in 0 1; do SLURM_PROCID=$i "$@" || exit $?; done\n')
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_JOB_NODELIST="node[A-B]", SLURM_NTASKS="2",
             SLURM_SUBMIT_DIR=REPO, KFJ_PYTHON=str(bin_dir / "python"))
  r = subprocess.run(["bash", os.path.join(REPO, "launch", "gpu_slurm.sbatch"), "--config", CFG, "--workdir", "/w"],
                     capture_output=True, text=True, timeout=30, env=env)
  assert r.returncode == 0, r.stderr
  assert r.stdout.splitlines() == [f"nodeA:12355 2 {i} -m kforcing_jax.train --config {CFG} --workdir /w"
                                   for i in (0, 1)]


def test_gpu_ssh_recipe_runs_one_process_per_host(tmp_path):
  # ssh runs the remote command here; every host's output comes back prefixed with its name.
  bin_dir = _fake_bin(tmp_path, python=_FAKE_PY, ssh='while [[ "$1" == -* ]]; do shift; done\nshift\nbash -c "$*"\n')
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", KFJ_HOSTS="h0 h1", KFJ_PYTHON=str(bin_dir / "python"))
  r = subprocess.run(["bash", os.path.join(REPO, "launch", "gpu_ssh.sh"), "--config", CFG, "--workdir", "/w"],
                     capture_output=True, text=True, timeout=30, env=env)
  assert r.returncode == 0, r.stderr
  assert sorted(r.stdout.splitlines()) == [f"[h{i}] h0:12355 2 {i} -m kforcing_jax.train --config {CFG} --workdir /w"
                                           for i in (0, 1)]


def test_run_tpu_builds_the_venv_once(tmp_path):
  # A venv whose stamp matches setup.py and the extras is left alone: --setup_only returns at once, no pip.
  venv = tmp_path / "venv"
  venv.mkdir()
  with open(os.path.join(REPO, "setup.py"), "rb") as f:
    digest = hashlib.sha1(f.read()).hexdigest()[:12]
  (venv / f".kfj_setup_{digest}_tpu").touch()
  r = subprocess.run(["bash", os.path.join(REPO, "launch", "run_tpu.sh"), "--setup_only"], capture_output=True,
                     text=True, timeout=30, env=dict(os.environ, KFJ_VENV=str(venv), KFJ_PYTHON="/nonexistent"))
  assert r.returncode == 0 and r.stdout == "", r.stderr


def test_gpu_ssh_recipe_fails_when_a_host_fails(tmp_path):
  bin_dir = _fake_bin(tmp_path, python='[[ "$KFJ_PROCESS_ID" == 1 ]] && exit 3\necho ok\n',
                      ssh='while [[ "$1" == -* ]]; do shift; done\nshift\nbash -c "$*"\n')
  env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", KFJ_HOSTS="h0 h1", KFJ_PYTHON=str(bin_dir / "python"))
  r = subprocess.run(["bash", os.path.join(REPO, "launch", "gpu_ssh.sh"), "--config", CFG, "--workdir", "/w"],
                     capture_output=True, text=True, timeout=30, env=env)
  assert r.returncode == 3
