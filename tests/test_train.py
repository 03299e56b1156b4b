"""The spine: train_and_evaluate end to end on tiny data, resume, data parallelism."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from cellvit_jax.modes import train
from cellvit_jax.runs import record as results_lib
from conftest import REPO, tiny_config


def _records(workdir, split):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def test_tiny_run_learns_and_writes_results(tiny_trained_run):
  workdir = tiny_trained_run
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  train_records = _records(workdir, "train")
  assert train_records[-1]["loss"] < train_records[0]["loss"] - 0.1
  # 4 balanced classes: chance is 0.25.
  assert results["test"]["accuracy"] > 0.4, results["test"]
  for f in ("results.json", "config.json", "metrics.jsonl"):
    assert os.path.exists(os.path.join(workdir, f))
  assert any(n.startswith("events.out.tfevents")
             for n in os.listdir(os.path.join(workdir, "tensorboard")))
  with open(os.path.join(workdir, "results.json")) as f:
    stored = json.load(f)
  assert set(stored["test"]) >= {"accuracy", "balanced_accuracy", "macro_f1", "per_class_recall",
                                 "confusion_matrix"}
  assert stored["config"]["model"]["name"] == "customvit"
  assert stored["train_counts"] == {n: 128 for n in stored["train_counts"]}
  assert "test accuracy" in results_lib.summary_table(stored)


def test_interrupted_run_resumes_and_finished_run_is_kept(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  overrides = {"train.epochs": 2.0, "train.max_steps_per_run": 3}
  first = train.train_and_evaluate(tiny_config(tiny_data_dir, **overrides), workdir)
  assert first == {"workdir": workdir, "step": 3, "total_steps": 32, "finished": False}
  total = first["total_steps"]
  overrides["train.max_steps_per_run"] = 0  # may change between invocations
  second = train.train_and_evaluate(tiny_config(tiny_data_dir, **overrides), workdir)
  assert second["finished"] and second["step"] == total
  steps = [r["step"] for r in _records(workdir, "train")]
  # Continued, not restarted.
  assert steps == sorted(steps) and steps[-1] == total and min(steps) <= 4
  with open(os.path.join(workdir, "results.json")) as f:
    stored = f.read()
  third = train.train_and_evaluate(tiny_config(tiny_data_dir, **overrides), workdir)
  assert third["test"] == second["test"]
  with open(os.path.join(workdir, "results.json")) as f:
    assert f.read() == stored  # a finished run is not recomputed or rewritten


def test_other_config_in_same_workdir_is_refused(tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(tiny_config(tiny_data_dir, **{"train.epochs": 1.0}), workdir)
  # The run's files; .lock is the workdir's lock, which the refused run held while it checked.
  files = lambda: {f: os.path.getmtime(os.path.join(workdir, f)) for f in os.listdir(workdir)
                   if f != ".lock"}
  before = files()
  with pytest.raises(ValueError, match="different config.*optim.lr"):
    train.train_and_evaluate(tiny_config(tiny_data_dir, **{"train.epochs": 1.0, "optim.lr": 0.1}),
                             workdir)
  assert before == files() and "config.json" in before
  assert open(os.path.join(workdir, ".lock")).read() == ""  # and released


EQUIVALENCE = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    sys.path.insert(0, {tests!r})
    import jax, numpy as np
    from cellvit_jax import models, parallel
    from cellvit_jax.engine import optimizer, steps
    from conftest import tiny_config
    assert jax.device_count() == 8
    config = tiny_config("unused")
    rng = np.random.default_rng(0)
    batches = [{{"image": rng.integers(0, 256, (32, 40, 40, 3), dtype=np.uint8),
                 "label": rng.integers(0, 4, 32).astype(np.int32)}} for _ in range(4)]
    for name, kwargs in [("customvit", dict(config.model.kwargs)), ("resnet18", dict(width=8))]:
      model = models.build(name, 4, **kwargs)
      out = {{}}
      for n in (1, 8):
        mesh = parallel.make_mesh(jax.devices()[:n])
        tx, schedule = optimizer.make_optimizer(config.optim, model, 10, 2)
        state = steps.create_state(jax.random.key(0), model, tx, 40, mesh)
        train_step, _ = steps.make_steps(model, schedule, mesh, config.optim, config.augment,
                                         config.normalize)
        losses = []
        for i, batch in enumerate(batches):
          state, m = train_step(state, parallel.shard_batch(batch, mesh), jax.random.key(i))
          losses.append(float(m["loss"]))
          if i == 0:
            leaves = jax.tree.leaves(jax.device_get((state.params, state.batch_stats)))
        out[n] = (np.array(losses), leaves)
      loss_diff = float(np.max(np.abs(out[1][0] - out[8][0])))
      param_diff = max(float(np.max(np.abs(a - b))) for a, b in zip(out[1][1], out[8][1]))
      print("DIFF", name, loss_diff, param_diff)
""")


# About a minute (a subprocess with eight host devices compiles two models): with -m slow.
@pytest.mark.slow
@pytest.mark.parametrize("name", ["customvit", "resnet18"])
def test_eight_devices_match_one_device(name, equivalence_output):
  """Global-batch data parallelism on 1 vs 8 simulated devices: the parameters (BatchNorm
  statistics included) after one step agree within 1e-5 and the loss curve over four steps
  within 5e-5. The tolerance is float32 reduction-order noise: the all-reduce sums in
  another order, and AdamW's g / sqrt(v) amplifies it for near-zero gradients over steps."""
  line = [out_line for out_line in equivalence_output.splitlines()
          if out_line.startswith(f"DIFF {name} ")][0]
  loss_diff, param_diff = map(float, line.split()[2:])
  assert loss_diff < 5e-5 and param_diff < 1e-5, line


@pytest.fixture(scope="module")
def equivalence_output():
  script = EQUIVALENCE.format(tests=os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout
