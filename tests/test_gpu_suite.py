"""benchmarks/gpu_suite.py's own machinery: time limits, the budget, the files it writes.
Its smoke run (every step, tiny) takes minutes on a CPU: docs/benchmarks.md gives the command."""
import json
import os
import sys
import time

from benchmarks import gpu_suite


def test_a_step_that_overruns_is_killed_with_its_children_and_recorded(tmp_path):
  marker = tmp_path / "child_alive"
  # The grandchild outlives the child's kill unless the whole process group is killed.
  grandchild = f"import time; time.sleep(3); open({str(marker)!r}, 'w')"
  script = tmp_path / "step.py"
  script.write_text("import subprocess, sys, time\n"
                    f"subprocess.Popen([sys.executable, '-c', {grandchild!r}])\n"
                    "time.sleep(60)\n")
  t0 = time.perf_counter()
  status, seconds, rc = gpu_suite.run_step([sys.executable, str(script)], 2.0,
                                           str(tmp_path / "log"))
  assert status == "timeout" and rc is None
  assert 2.0 <= seconds < 20 and time.perf_counter() - t0 < 20
  time.sleep(2)
  assert not marker.exists()
  assert gpu_suite.run_step([sys.executable, "-c", "raise SystemExit(3)"], 30,
                            str(tmp_path / "log"))[::2] == ("failed", 3)


def test_steps_past_the_budget_are_skipped_and_both_files_written(tmp_path):
  suite = gpu_suite.run_suite(str(tmp_path), smoke=True, budget_s=0.0)
  names = [name for name, *_ in gpu_suite.plan(str(tmp_path), smoke=True)]
  assert [r["name"] for r in suite["steps"]] == names
  assert {r["status"] for r in suite["steps"]} == {"skipped"}
  with open(tmp_path / "suite.json") as f:
    assert json.load(f)["steps"] == suite["steps"]
  table = (tmp_path / "suite.md").read_text()
  assert all(f"| {name} | skipped |" in table for name in names)


def test_the_plan_covers_what_issue_28_asks_for(tmp_path):
  steps = {name: (argv, limit) for name, argv, limit, _ in gpu_suite.plan(str(tmp_path), False)}
  for model in ("customvit", "customvit_hybrid", "resnet18", "densenet121"):
    assert f"--config=configs/{model}.py" in steps[f"train_{model}"][0]
  big = steps["train_customvit_b1024"][0]
  assert "--config.dataset.flaglimit=16384" in big and "--config.train.batch_size=1024" in big
  assert "--config.compile_cache_dir=off" in big  # time to first step is a cold start
  assert any(a.startswith("--model=resnet18") for a in steps["train_step_resnet18"][0])
  # the default run is whole (its test accuracy is the README's figure)
  assert not any("train.epochs" in a for a in steps["train_customvit"][0])
  # every step's limit fits the 8-minute device check on its own
  assert all(0 < limit <= 150 for _, limit in steps.values())
  assert os.path.basename(steps["multistep"][0][2]) == "benchmarks.multistep_compile"
