"""Faults injected into real runs: SIGKILL mid-epoch, SIGTERM, a non-finite loss, a
checkpoint cut off mid-write. Each run is a subprocess of the real entry point."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from cellvit_jax import checkpoint
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


@pytest.mark.parametrize("per_dispatch", [1, 4])
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tiny_data_dir, tmp_path,
                                                                per_dispatch):
  """Also with 4 steps per jitted call (config.train.steps_per_dispatch)."""
  ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
  extra = {"train.steps_per_dispatch": per_dispatch}
  subprocess.run(_cmd(tiny_data_dir, ref, **extra), cwd=REPO, check=True, capture_output=True,
                 timeout=600)

  proc = subprocess.Popen(_cmd(tiny_data_dir, killed, **extra), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  # Once the first checkpoint (step 16, written asynchronously) is final, mid-epoch 2 or 3.
  _wait_for(lambda: os.path.isdir(os.path.join(killed, "checkpoints", "16"))
            and _steps_logged(killed) >= 18, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert checkpoint.Checkpointer(killed).latest_step() in (16, 32)
  assert not os.path.exists(os.path.join(killed, "results.json"))
  subprocess.run(_cmd(tiny_data_dir, killed, **extra), cwd=REPO, check=True, capture_output=True,
                 timeout=600)

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
  subprocess.run(_cmd(tiny_data_dir, workdir), cwd=REPO, check=True, capture_output=True, timeout=600)
  steps = [r["step"] for r in _train_records(workdir)]
  assert steps == list(range(1, 49))  # resumed where it stopped, each step logged once


def test_non_finite_loss_stops_with_the_step_and_keeps_last_good_checkpoint(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  proc = subprocess.run(_cmd(tiny_data_dir, workdir, **{"optim.lr": 1e30, "optim.grad_clip": 0.0,
                                                         "optim.warmup_epochs": 0.0}),
                        cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 2
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith("error: non-finite") and "at training step" in line and "learning rate" in line
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
