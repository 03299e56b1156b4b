"""mode=study end to end (tiny grid: 2 models x 2 FlagLimits x 1 seed), resume, and the report."""
import csv
import dataclasses
import json
import os
import re

import matplotlib.pyplot as plt
import ml_collections
import pytest

from cellvit_jax.experiments import report, report_plots
from cellvit_jax.modes import study, study_grid
from conftest import REPO
from study_helpers import tiny_study_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _snapshot(cell_dir):
  """Content and mtime of every file a finished cell wrote (checkpoints included)."""
  out = {}
  for dirpath, _, files in os.walk(cell_dir):
    for name in files:
      p = os.path.join(dirpath, name)
      with open(p, "rb") as f:
        out[p] = (os.stat(p).st_mtime_ns, f.read())
  return out


def test_tiny_study_runs_resumes_and_reports(tiny_data_dir, tmp_path):
  study_dir = str(tmp_path / "study")
  # 1. The first cell only, as if the process were killed right after it.
  first = study.run_mode(tiny_study_config(tiny_data_dir, max_cells=1), study_dir)
  assert first["finished"] == [0] and first["remaining"] == 3
  cells = study_grid.cells(tiny_study_config(tiny_data_dir).study)
  assert [(c.row, c.flaglimit) for c in cells] == [("customvit", 32), ("resnet18", 32),
                                                   ("customvit", 64), ("resnet18", 64)]
  done_before = _snapshot(cells[0].workdir(study_dir))
  assert not os.path.exists(cells[1].workdir(study_dir))

  # 2. An interrupted cell: resnet18 stops after 2 of its 4 steps (max_steps_per_run).
  config = tiny_study_config(tiny_data_dir, max_cells=1)
  config.study.set.train.max_steps_per_run = 2
  second = study.run_mode(config, study_dir)
  assert second["skipped"] == [0] and second["unfinished"] == [1]
  assert not study.is_done(cells[1], study_dir)
  assert os.path.isdir(os.path.join(cells[1].workdir(study_dir), "checkpoints", "2"))

  # 3. Rerun: the finished cell is untouched, the interrupted one resumes, the rest run.
  third = study.run_mode(tiny_study_config(tiny_data_dir), study_dir)
  assert third["skipped"] == [0] and third["finished"] == [1, 2, 3] and third["remaining"] == 0
  assert _snapshot(cells[0].workdir(study_dir)) == done_before
  with open(os.path.join(cells[1].workdir(study_dir), "metrics.jsonl")) as f:
    train_steps = [r["step"] for r in map(json.loads, f) if r.get("split") == "train"]
  # Step 2's record (written before the interruption) survives: it resumed, not restarted.
  assert train_steps == [2, 4]
  for cell in cells:
    d = cell.workdir(study_dir)
    with open(os.path.join(d, "results.json")) as f:
      results = json.load(f)
    assert results["finished"] and results["flaglimit"] == cell.flaglimit
    assert results["train_examples"] == 4 * cell.flaglimit
    assert os.path.isfile(os.path.join(d, "blur", "blur.json"))
  for row in ("customvit", "resnet18"):
    with open(os.path.join(study_dir, "cost", f"{row}.json")) as f:
      cost = json.load(f)
    assert cost["params"] > 0 and cost["gflops_per_image"] > 0
    assert set(cost["images_per_sec"]) == {"1", "8"}

  # 4. A rerun of a finished study does nothing.
  assert study.run_mode(tiny_study_config(tiny_data_dir), study_dir)["skipped"] == [0, 1, 2, 3]

  # 5. The report: tables from the store, CSVs and PNGs.
  out = report.write_report(study_dir)
  for name in ("data_scale.png", "blur_pre_resize.png", "blur_post_resize.png",
               "accuracy_vs_cost.png"):
    with open(out[name], "rb") as f:
      assert f.read(8) == PNG_SIGNATURE, name
  with open(out["accuracy.csv"]) as f:
    rows = list(csv.DictReader(f))
  assert [(r["row"], r["flaglimit"]) for r in rows] == [("customvit", "32"), ("customvit", "64"),
                                                        ("resnet18", "32"), ("resnet18", "64")]
  with open(os.path.join(cells[3].workdir(study_dir), "results.json")) as f:
    acc = json.load(f)["test"]["accuracy"]
  assert float(rows[3]["accuracy_mean"]) == pytest.approx(acc)
  with open(out["report.md"]) as f:
    md = f.read()
  for heading in ("## Test accuracy per model and FlagLimit", "## Test macro-F1 per model and "
                  "FlagLimit", "## Data-scale curves", "## Blur robustness", "## Inference cost",
                  "## Accuracy vs inference cost", "| model | FL 32 | FL 64 |"):
    assert heading in md
  assert "| resnet18 | " in md and f"{acc:.4f}" in md
  for name in ("cells.csv", "blur.csv", "cost.csv", "accuracy_vs_cost.csv"):
    assert os.path.getsize(out[name]) > 0


def _drawn_tick_labels(fig):
  """{axes index: (x labels, y labels)} that draw() put inside each axis' view, empty ones out."""
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  out = {}
  for i, ax in enumerate(fig.axes):
    per_axis = []
    for axis, coord in ((ax.xaxis, 0), (ax.yaxis, 1)):
      lo, hi = sorted(axis.get_view_interval())
      labels = [t for t in axis.get_ticklabels(which="both")
                if t.get_visible() and t.get_text()
                and lo * (1 - 1e-9) <= t.get_position()[coord] <= hi * (1 + 1e-9)]
      per_axis.append([(t.get_text(), t.get_window_extent(renderer)) for t in labels])
    out[i] = tuple(per_axis)
  return out


def _assert_readable(labels):
  texts = [text for text, _ in labels]
  assert 2 <= len(texts) <= report_plots.MAX_LABELS, texts
  boxes = [box for _, box in labels]
  for a in range(len(boxes)):
    for b in range(a + 1, len(boxes)):
      assert not boxes[a].overlaps(boxes[b]), (texts[a], texts[b])


def _cost_points(gflops, images_per_sec):
  return [{"row": f"model{i}", "accuracy": 0.80 + 0.02 * i, "accuracy_std": 0.01, "gflops": g,
           "images_per_sec": s, "batch": 64, "seeds": 3}
          for i, (g, s) in enumerate(zip(gflops, images_per_sec))]


def _readable_labels(fig):
  """The figure's drawn tick labels per axes, each axis checked readable; closes the figure."""
  try:
    drawn = _drawn_tick_labels(fig)
  finally:
    plt.close(fig)
  for x_labels, y_labels in drawn.values():
    _assert_readable(x_labels)
    _assert_readable(y_labels)
  return drawn


@pytest.mark.parametrize("gflops, images_per_sec, narrow", [
    ((0.039, 0.078), (168.3, 598.0), True),   # the example study: less than a decade
    ((0.039, 4.4, 17.6, 1100.0), (3.0, 120.0, 900.0, 150000.0), False),  # 4-5 decades
])
def test_accuracy_vs_cost_axes_are_readable(gflops, images_per_sec, narrow):
  drawn = _readable_labels(
      report_plots.accuracy_vs_cost_figure(_cost_points(gflops, images_per_sec), "a title"))
  for x_labels, _ in drawn.values():
    if narrow:   # plain decimals: no mathtext ($10^{-2}$), no 4e-02
      assert all(re.fullmatch(r"\d+(\.\d+)?", t) for t, _ in x_labels), x_labels
  gflops_labels = [t for t, _ in drawn[0][0]]
  if narrow:
    assert gflops_labels == ["0.04", "0.05", "0.06", "0.08"]
  else:
    assert gflops_labels == ["0.1", "1", "10", "100", "1000"]


def test_data_scale_labels_at_most_six_flaglimits():
  fls = [2 ** k for k in range(1, 13)]
  aggregates = [{"row": r, "flaglimit": f, "accuracy_mean": 0.5 + 0.03 * k,
                 "accuracy_std": 0.01, "macro_f1_mean": 0.4 + 0.03 * k, "macro_f1_std": 0.01}
                for r in ("a", "b") for k, f in enumerate(fls)]
  drawn = _readable_labels(report_plots.data_scale_figure(aggregates, ["a", "b"]))
  for x_labels, _ in drawn.values():
    assert [t for t, _ in x_labels] == ["2", "8", "32", "128", "512", "2048"]


def test_grid_order_workers_and_validation(tiny_data_dir, tmp_path):
  s = tiny_study_config(tiny_data_dir, flaglimits=(256, 512, 1024), seeds=(0, 1)).study
  cells = study_grid.cells(s)
  assert len(cells) == 2 * 3 * 2
  assert [c.index for c in study_grid.cells_of_worker(cells, (1, 3))] == [1, 4, 7, 10]
  shares = [study_grid.cells_of_worker(cells, (k, 3)) for k in range(3)]
  assert sorted(c.index for m in shares for c in m) == list(range(12))  # a partition
  assert len(study_grid.cells_of_worker(cells, None)) == 12
  assert cells[0].workdir("/s") == "/s/runs/customvit/fl256/seed0"
  config = study_grid.cell_config(cells[3], s)
  assert (config.dataset.flaglimit, config.seed, config.model.kwargs.width) == (256, 1, 8)
  assert config.dataset.name == "synthetic_cells_tiny"
  missing = dataclasses.replace(cells[0], spec="configs/nope.py:x")
  with pytest.raises(ValueError, match=r"study row 'customvit': config file 'configs/nope.py'.*"
                     r"looked at /.*configs/nope.py"):
    study_grid.cell_config(missing, s)
  for bad in ("3/3", "a/2", "1"):
    with pytest.raises(ValueError, match="k/n"):
      study_grid.parse_worker(bad)
  with pytest.raises(ValueError, match="powers of two"):
    study_grid.check_flaglimits((256, 300))
  s.rows = "customvit,nope"
  with pytest.raises(ValueError, match="nope"):
    study_grid.cells(s)


def test_unregistered_mode_and_bad_override_fail_before_any_cell(tiny_data_dir, tmp_path):
  fm = tmp_path / "fm_like.py"
  fm.write_text("from cellvit_jax.config import defaults as default_config\n"
                "def get_config(arg):\n"
                "  c = default_config.get_config()\n"
                "  c.mode = arg.split(',')[1]\n"
                "  return c\n")
  config = tiny_study_config(tiny_data_dir)
  config.study.models = ml_collections.ConfigDict(
      {"uni_probe": {"config": f"{fm}:uni,probe", "set": {}}})
  with pytest.raises(ValueError, match="'uni_probe'.*mode 'probe'"):
    study.run_mode(config, str(tmp_path / "s"))
  assert not os.path.exists(tmp_path / "s")
  config = tiny_study_config(tiny_data_dir)
  config.study.set.train = ml_collections.ConfigDict({"epochz": 1.0})
  with pytest.raises(ValueError, match="config.train has no field 'epochz'"):
    study.run_mode(config, str(tmp_path / "s"))
  config = tiny_study_config(tiny_data_dir)
  config.study.models.resnet18.set = ml_collections.ConfigDict({"train": {"batch_size": 0}})
  with pytest.raises(ValueError, match="study row 'resnet18'.*batch_size=0"):
    study.run_mode(config, str(tmp_path / "s"))
  config = tiny_study_config(tiny_data_dir, parallel="data", worker="0/2")
  with pytest.raises(ValueError, match="parallel=cells"):
    study.run_mode(config, str(tmp_path / "s"))
  with pytest.raises(ValueError, match="no runs/"):
    report.write_report(str(tmp_path / "empty"))


@pytest.mark.slow  # two CLI processes, about 90 s
def test_sigkill_after_first_cell_then_rerun_recomputes_nothing(tiny_data_dir, tmp_path):
  import signal
  import subprocess
  import sys
  import time
  from study_helpers import write_cli_config
  config = write_cli_config(tmp_path / "tiny_study.py", tiny_data_dir, rows=("customvit",))
  study_dir = tmp_path / "study"
  cmd = [sys.executable, "-m", "cellvit_jax.main", f"--config={config}", f"--workdir={study_dir}"]
  env = {**os.environ, "PYTHONPATH": REPO}
  cells = study_grid.cells(tiny_study_config(tiny_data_dir, rows=("customvit",)).study)
  marker = os.path.join(cells[0].workdir(str(study_dir)), "cell.json")
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert os.path.exists(marker)
  before = _snapshot(cells[0].workdir(str(study_dir)))
  out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "1 already finished" in out.stdout or "2 already finished" in out.stdout
  assert _snapshot(cells[0].workdir(str(study_dir))) == before
  assert all(study.is_done(c, str(study_dir)) for c in cells)


def test_sigterm_during_a_cell_stops_the_study_after_that_cell(tiny_data_dir, tmp_path):
  """A preempted VM's SIGTERM reaches the cell's training (which saves and returns, as in
  train.py); the study must then stop, not start the next cell."""
  import signal

  from cellvit_jax.engine import preemption

  started = []

  def train_receiving_sigterm(cell_config, workdir):
    started.append(workdir)
    with preemption.PreemptionWatch() as watch:  # what train_and_evaluate holds while training
      os.kill(os.getpid(), signal.SIGTERM)
      assert watch.requested
    return {"finished": False}  # stopped early: no results.json

  before = signal.getsignal(signal.SIGTERM)
  summary = study.run_mode(tiny_study_config(tiny_data_dir), str(tmp_path / "s"),
                           modes={"train": train_receiving_sigterm})
  assert len(started) == 1 and summary["unfinished"] == [0] and summary["finished"] == []
  assert summary.get("stopped_by_sigterm") and summary["remaining"] == 4
  assert signal.getsignal(signal.SIGTERM) == before  # the study's handler is gone again
