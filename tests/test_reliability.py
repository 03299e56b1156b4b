"""Faults injected into real runs: SIGKILL mid-epoch, SIGTERM, a non-finite loss, a
checkpoint cut off mid-write, two runs started on one workdir. Each run is a subprocess of the
real entry point."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from cellvit_jax.runs import checkpoint
from conftest import REPO, as_flags, tiny_overrides

# Three epochs of 16 steps, a checkpoint every epoch, logs every step: a kill lands mid-epoch.
RUN = {"train.epochs": 3.0, "train.log_every_steps": 1, "train.checkpoint_every_epochs": 1.0,
       "train.eval_every_epochs": 3.0}


def _cmd(data_dir, workdir, **extra):
  return [sys.executable, "-m", "cellvit_jax.main", "--config=configs/customvit.py",
          f"--workdir={workdir}", *as_flags(tiny_overrides(data_dir, **{**RUN, **extra}))]


def _train_records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == "train"]


def _wait_for(predicate, proc, timeout=300):
  t0 = time.time()
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError(f"run ended early: {proc.stderr.read()[-2000:]}")
    if time.time() - t0 > timeout:
      proc.kill()
      raise AssertionError("timed out waiting for the run")
    time.sleep(0.05)


def _steps_logged(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return sum(1 for line in f if '"train"' in line)


def sigkill_mid_run(cmd, workdir, checkpoint_step, steps, env=None):
  """Starts `cmd` training into `workdir` and SIGKILLs it once checkpoint `checkpoint_step`
  (written asynchronously) is final and `steps` train steps are logged; the run must have left
  that checkpoint or the next one, and no results."""
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: os.path.isdir(os.path.join(workdir, "checkpoints", str(checkpoint_step)))
            and _steps_logged(workdir) >= steps, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert checkpoint.Checkpointer(workdir).latest_step() in (checkpoint_step, 2 * checkpoint_step)
  assert not os.path.exists(os.path.join(workdir, "results.json"))


# k = 4 (several steps per dispatch) takes minutes: out of the default command, run with -m slow.
@pytest.mark.parametrize("per_dispatch", [1, pytest.param(4, marks=pytest.mark.slow)])
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tiny_data_dir, tmp_path,
                                                                per_dispatch):
  """Also with 4 steps per jitted call (config.train.steps_per_dispatch)."""
  ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
  extra = {"train.steps_per_dispatch": per_dispatch}
  subprocess.run(_cmd(tiny_data_dir, ref, **extra), cwd=REPO, check=True, capture_output=True,
                 timeout=600)

  # 16 steps per epoch: killed mid-epoch 2 or 3.
  sigkill_mid_run(_cmd(tiny_data_dir, killed, **extra), killed, checkpoint_step=16, steps=18)
  subprocess.run(_cmd(tiny_data_dir, killed, **extra), cwd=REPO, check=True,
                 capture_output=True, timeout=600)

  # Bitwise on CPU: every logged train metric (loss, parameter norm, ...) and the results.
  drop = ("images_per_sec",)
  strip = lambda rs: [{k: v for k, v in r.items() if k not in drop} for r in rs]
  assert strip(_train_records(killed)) == strip(_train_records(ref))
  with open(os.path.join(ref, "results.json")) as f:
    a = json.load(f)
  with open(os.path.join(killed, "results.json")) as f:
    b = json.load(f)
  assert a["test"] == b["test"] and a["val"] == b["val"]


def test_sigterm_saves_at_the_next_step_and_exits_zero(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen(_cmd(tiny_data_dir, workdir), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: _steps_logged(workdir) >= 3, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  assert "SIGTERM: saved a checkpoint at step" in err
  step = checkpoint.Checkpointer(workdir).latest_step()
  assert 3 <= step < 48
  assert not os.path.exists(os.path.join(workdir, "results.json"))
  subprocess.run(_cmd(tiny_data_dir, workdir), cwd=REPO, check=True, capture_output=True,
                 timeout=600)
  steps = [r["step"] for r in _train_records(workdir)]
  assert steps == list(range(1, 49))  # resumed where it stopped, each step logged once


def test_non_finite_loss_stops_with_the_step_and_keeps_last_good_checkpoint(tiny_data_dir,
                                                                            tmp_path):
  workdir = str(tmp_path / "run")
  proc = subprocess.run(_cmd(tiny_data_dir, workdir, **{"optim.lr": 1e30, "optim.grad_clip": 0.0,
                                                         "optim.warmup_epochs": 0.0}),
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith("error: non-finite")
  assert "at training step" in line and "learning rate" in line
  bad_step = int(line.split("at training step ")[1].split(";")[0])
  latest = checkpoint.Checkpointer(workdir).latest_step()
  assert latest is None or latest < bad_step


def test_checkpoint_cut_off_mid_write_never_becomes_latest(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  subprocess.run(_cmd(tiny_data_dir, workdir, **{"train.epochs": 1.0}), cwd=REPO, check=True,
                 capture_output=True, timeout=600)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  # What a process killed during a save leaves: orbax's temporary folder, never renamed.
  partial = os.path.join(ckpt_dir, "99.orbax-checkpoint-tmp-1234567890")
  os.makedirs(os.path.join(partial, "state"))
  with open(os.path.join(partial, "state", "garbage"), "wb") as f:
    f.write(b"\0" * 100)
  assert checkpoint.Checkpointer(workdir).latest_step() == 16


# --- one run per workdir (workdir_lock) ----------------------------------------------------

HOLDER = ("import sys, time\nfrom cellvit_jax.runs import lock as workdir_lock\n"
          "workdir_lock.acquire(sys.argv[1], *sys.argv[2:])\nprint('held', flush=True)\n"
          "time.sleep(600)\n")


def _hold(directory, *name):
  """A process holding the lock of `directory` (lock file `name`) until killed."""
  os.makedirs(directory, exist_ok=True)
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), *name], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held", proc.stderr.read()[-2000:]
  return proc


def _lock_record(directory, name=".lock"):
  with open(os.path.join(directory, name)) as f:
    text = f.read()
  return json.loads(text) if text else {}


def test_second_run_on_a_busy_workdir_stops_at_once_and_a_killed_holder_is_taken_over(
    tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  long_run = {"train.epochs": 50.0}  # 800 steps: still running while the others start
  first = subprocess.Popen(_cmd(tiny_data_dir, workdir, **long_run), cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: _steps_logged(workdir) >= 2, first)
  t0 = time.time()
  second = subprocess.run(_cmd(tiny_data_dir, workdir, **long_run), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
  assert second.returncode == 2 and len(errors) == 1, second.stderr[-2000:]
  assert second.stderr.strip().splitlines()[-1] == errors[0]
  assert f"is in use by another run: pid {first.pid} on host {socket.gethostname()}" in errors[0]
  assert "Resumed" not in second.stderr and "parameters;" not in second.stderr  # no training
  assert time.time() - t0 < 240  # start-up and config checks only (generous: shared CPUs)
  assert first.poll() is None  # the first run goes on

  first.send_signal(signal.SIGKILL)  # its flock dies with it; its pid stays in the file
  first.wait()
  assert _lock_record(workdir)["pid"] == first.pid
  resumed_at = checkpoint.Checkpointer(workdir).latest_step() or 0
  third = subprocess.run(_cmd(tiny_data_dir, workdir, **long_run, **{"train.max_steps_per_run": 4}),
                         cwd=REPO, capture_output=True, text=True, timeout=600)
  assert third.returncode == 0, third.stderr[-2000:]
  assert f"taking over the lock of pid {first.pid}" in third.stderr
  assert "no longer running" in third.stderr
  assert f"Stopped at step {resumed_at + 4} of 800" in third.stdout  # it trained
  assert _lock_record(workdir) == {}  # released at the end


def test_jax_distributed_job_on_a_busy_workdir_stops_every_process(tiny_data_dir, tmp_path):
  """Process 0 holds the lock for the job; when it cannot, every process exits 2."""
  workdir = str(tmp_path / "run")
  holder = _hold(workdir)
  try:
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen(
        _cmd(tiny_data_dir, workdir), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**env, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                        "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}) for i in range(2)]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [2, 2], errs[0][-2000:] + errs[1][-2000:]
    lines = [e.strip().splitlines()[-1] for e in errs]
    assert f"in use by another run: pid {holder.pid} on host" in lines[0]
    assert "could not be locked by process 0 of this job" in lines[1]
    assert sorted(os.listdir(workdir)) == [".lock"]  # nothing else was written
  finally:
    holder.kill()
    holder.wait()


def test_lock_takeover_rules_and_release(tmp_path, caplog):
  from cellvit_jax.runs import lock as workdir_lock
  d = str(tmp_path)
  path = os.path.join(d, ".lock")
  dead = subprocess.Popen(["true"])
  dead.wait()

  def write(record, age=0.0):
    with open(path, "w") as f:
      json.dump(record, f)
    os.utime(path, (time.time() - age, time.time() - age))

  # A dead process of this host: taken over, with a log line.
  write({"pid": dead.pid, "host": socket.gethostname(), "started": "then"})
  with caplog.at_level("WARNING"):
    workdir_lock.acquire(d)
  assert f"taking over the lock of pid {dead.pid}" in caplog.text
  assert _lock_record(d)["pid"] == os.getpid()
  assert workdir_lock.acquire(d) == path  # held by this process already: a no-op
  workdir_lock.release(path)
  assert _lock_record(d) == {} and workdir_lock.held() == []

  # Another host, recently alive: refused with its host name, the file left as it was.
  write({"pid": 4242, "host": "gpu-node-7", "started": "now"}, age=5)
  with pytest.raises(workdir_lock.WorkdirLocked, match=r"in use by another run: pid 4242 on "
                     r"host gpu-node-7 \(started now\) \(its last heartbeat was \d+ s ago"):
    workdir_lock.acquire(d)
  assert _lock_record(d)["host"] == "gpu-node-7" and workdir_lock.held() == []
  # ... and silent for longer than STALE_AFTER_S: taken over.
  write({"pid": 4242, "host": "gpu-node-7", "started": "then"}, age=2 * workdir_lock.STALE_AFTER_S)
  caplog.clear()
  with caplog.at_level("WARNING"):
    workdir_lock.acquire(d)
  assert "taking over the lock of pid 4242 on gpu-node-7" in caplog.text
  assert "no heartbeat" in caplog.text

  # releases_own_locks frees what the call took and keeps what was held before it.
  other = str(tmp_path / "other")
  os.makedirs(other)

  @workdir_lock.releases_own_locks
  def run():
    workdir_lock.acquire(other)
    workdir_lock.acquire(d)
    raise ValueError("bad input")

  with pytest.raises(ValueError):
    run()
  assert workdir_lock.held() == [os.path.realpath(path)]
  workdir_lock.release(path)


def test_study_workers_lock_apart_and_a_second_copy_of_one_is_refused(tiny_data_dir, tmp_path):
  from cellvit_jax.runs import lock as workdir_lock
  from cellvit_jax.modes import study
  from study_helpers import tiny_study_config
  names = [study.lock_name(tiny_study_config(tiny_data_dir, parallel="cells", worker=w).study)
           for w in ("0/2", "1/2")]
  assert names == [".lock-worker0of2", ".lock-worker1of2"]
  assert study.lock_name(tiny_study_config(tiny_data_dir).study) == ".lock"  # parallel="data"
  study_dir = tmp_path / "study"
  holder = _hold(study_dir, names[0])  # worker 0 is running
  try:
    path = workdir_lock.acquire(str(study_dir), names[1])  # worker 1 starts beside it
    workdir_lock.release(path)
    config = tiny_study_config(tiny_data_dir, parallel="cells", worker="0/2")
    with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {holder.pid}"):
      study.run_mode(config, str(study_dir))  # a second worker 0
    assert sorted(os.listdir(study_dir)) == sorted(names)  # no study.json, no cell
  finally:
    holder.kill()
    holder.wait()
