"""The sealed test split (config.evaluate_test, runs/sealed_test.py): a screening run never
loads test, prints no test metric and records test_read=false; a final run records when it
read test; blur, robustness, the study and export_rows keep to a run's seal; final
evaluations alone carry bootstrap intervals."""
import datetime
import json
import os

import pytest

from cellvit_jax.config import defaults as config_defaults
from cellvit_jax.data import datasets
from cellvit_jax.experiments import export_rows, study_results
from cellvit_jax.modes import blur_study, probe, robustness, study, train
from cellvit_jax.modes import finished_run
from cellvit_jax.runs import sealed_test, workdir as workdir_lib
from conftest import tiny_config
from study_helpers import tiny_study_config

SHORT = {"train.epochs": 2.0, "train.eval_every_epochs": 1.0, "dataset.flaglimit": 32}


@pytest.fixture
def test_split_refused(monkeypatch):
  """Any read of the test split's labels or images raises (the specimen-leak check reads
  only specimen ids of every split, which is not reading test)."""
  requested = []
  labels, source = datasets.CellDataset.labels, datasets.CellDataset.source

  def guard(original):
    def read(self, split):
      requested.append(split)
      if split == "test":
        raise AssertionError(f"the test split of {self.name} was read by a screening run")
      return original(self, split)
    return read

  monkeypatch.setattr(datasets.CellDataset, "labels", guard(labels))
  monkeypatch.setattr(datasets.CellDataset, "source", guard(source))
  return requested


def _json(path):
  with open(path) as f:
    return json.load(f)


def _records(workdir, split):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == split]


def test_defaults_seal_test_and_the_final_configs_open_it():
  from cellvit_jax.config import files as config_files
  from conftest import REPO
  assert config_defaults.get_config().evaluate_test is False
  for spec in ("customvit.py", "customvit_hybrid.py", "fm.py:phikon,probe"):
    assert config_files.load(os.path.join(REPO, "configs", spec)).evaluate_test is True, spec
  assert config_files.load(os.path.join(REPO, "configs", "resnet18.py")).evaluate_test is False


def test_screening_run_never_reads_test_and_prints_none(tiny_data_dir, tmp_path, capsys,
                                                        test_split_refused):
  workdir = str(tmp_path / "screen")
  train.run_mode(tiny_config(tiny_data_dir, **SHORT, evaluate_test=False), workdir)
  printed = capsys.readouterr().out
  assert "test" not in test_split_refused and "val" in test_split_refused
  results = _json(os.path.join(workdir, "results.json"))
  assert "test" not in results and results["test_read"] is False
  assert results["test_read_at"] is None and results["val"]["accuracy"] > 0
  assert not os.path.exists(os.path.join(workdir, "test_predictions.npz"))
  assert _records(workdir, "test") == []
  summary = [line for line in printed.splitlines() if line.strip()]
  assert any(line.startswith("val accuracy") for line in summary)
  assert not any(line.startswith("test") for line in summary), printed


def test_final_run_records_when_it_read_test_and_intervals_only_at_the_end(tiny_data_dir,
                                                                          tmp_path):
  before = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
  workdir = str(tmp_path / "final")
  train.train_and_evaluate(tiny_config(tiny_data_dir, **SHORT), workdir)
  after = datetime.datetime.now(datetime.timezone.utc)
  results = _json(os.path.join(workdir, "results.json"))
  assert results["test_read"] is True and "accuracy_ci95" in results["test"]
  read_at = datetime.datetime.strptime(results["test_read_at"], "%Y-%m-%dT%H:%M:%SZ").replace(
      tzinfo=datetime.timezone.utc)
  assert before <= read_at <= after
  # Two val evaluations (after epoch 1 and at the end) and one test evaluation: only the
  # final ones carry bootstrap intervals, the periodic one the same fields as before.
  val, test = _records(workdir, "val"), _records(workdir, "test")
  assert len(val) == 2 and len(test) == 1
  fields = {"step", "split", "loss", "accuracy", "balanced_accuracy", "macro_f1"}
  assert set(val[0]) == fields
  intervals = {"accuracy_ci95", "balanced_accuracy_ci95", "macro_f1_ci95"}
  assert set(val[1]) == set(test[0]) == fields | intervals
  assert val[1]["accuracy_ci95"] == results["val"]["accuracy_ci95"]
  lo, hi = test[0]["accuracy_ci95"]
  assert lo <= results["test"]["accuracy"] <= hi


def test_screening_probe_never_reads_test(tiny_data_dir, tmp_path_factory, tmp_path,
                                          test_split_refused):
  base = str(tmp_path_factory.mktemp("base") / "run")
  train.train_and_evaluate(tiny_config(tiny_data_dir, **{
      "train.epochs": 0.0, "train.steps": 2, "dataset.flaglimit": 32, "evaluate_test": False}),
      base)
  o = {"mode": "probe", "probe.run": base, "dataset.flaglimit": 32, "evaluate_test": False}
  for extra in ({"probe.method": "knn"}, {"probe.method": "simpleshot", "probe.shots": 2,
                                          "probe.episodes": 2}):
    workdir = str(tmp_path / extra["probe.method"])
    r = probe.train_probe(tiny_config(tiny_data_dir, **o, **extra), workdir)
    assert "test" not in test_split_refused
    assert "test" not in r and r["test_read"] is False and r["val"]["accuracy"] > 0
    assert "test" not in r.get("few_shot", {}) and not any(
        "test" in e for e in r.get("few_shot", {}).get("per_episode", []))
    assert not os.path.exists(os.path.join(workdir, "test_predictions.npz"))
    assert "test" not in probe._describe(r)
  # A probe that would read test of a screening run's features is refused.
  with pytest.raises(ValueError, match=r"probe.run=.* is a screening run.*evaluate_test=false"):
    probe.train_probe(tiny_config(tiny_data_dir, **{**o, "evaluate_test": True}),
                      str(tmp_path / "final"))
  assert not os.path.exists(tmp_path / "final") and "test" not in test_split_refused


def test_screening_study_reads_val_only_and_its_report_refuses(tiny_data_dir, tmp_path,
                                                               test_split_refused):
  config = tiny_study_config(tiny_data_dir, rows=("customvit",), flaglimits=(32,),
                             screening=True)
  config.study.cost.enabled = False
  study_dir = str(tmp_path / "study")
  study.run_mode(config, study_dir)
  assert "test" not in test_split_refused
  cell = os.path.join(study_dir, "runs", "customvit", "fl32", "seed0")
  assert _json(os.path.join(cell, "config.json"))["evaluate_test"] is False
  assert _json(os.path.join(cell, "results.json"))["test_read"] is False
  blur = _json(os.path.join(cell, "blur", "blur.json"))
  assert blur["split"] == "val" and blur["test_read"] is False
  with pytest.raises(ValueError, match="screening cell.*results_table --mean"):
    study_results.load_cells(study_dir)
  # Blur and robustness of the screening run: test explicitly asked for is refused.
  run = finished_run.load_run(cell)
  for tool, fn in (("blur", lambda: blur_study.study(run, (0.0, 1.0), split="test")),
                   ("robustness", lambda: robustness.study(run, {}, split="test"))):
    with pytest.raises(ValueError, match=rf"config.{tool}.split='test' is the test split of a "
                       r"screening run.*--config.evaluate_test=true"):
      fn()
  assert "test" not in test_split_refused


def test_blur_of_a_final_run_reads_test_and_records_it(tiny_trained_run):
  run = finished_run.load_run(tiny_trained_run)
  assert sealed_test.split_of_finished_run(run.config, "", "blur") == "test"
  result = blur_study.study(run, (0.0, 1.0))
  assert result["split"] == "test" and result["test_read"] is True and result["test_read_at"]
  assert blur_study.study(run, (0.0, 1.0), split="val")["test_read"] is False


def test_a_final_study_cell_reads_test_whatever_its_row_config_says(tiny_data_dir):
  from cellvit_jax.modes import study_grid
  final = tiny_study_config(tiny_data_dir, rows=("resnet18",))  # configs/resnet18.py: sealed
  cell = study_grid.cells(final.study)[0]
  assert study_grid.cell_config(cell, final.study).evaluate_test is True
  screening = tiny_study_config(tiny_data_dir, rows=("resnet18",), screening=True)
  assert study_grid.cell_config(cell, screening.study).evaluate_test is False


def test_old_runs_without_the_switch_resume_and_load_as_having_read_test():
  old = config_defaults.get_config().to_dict()
  del old["evaluate_test"]
  final = {**old, "evaluate_test": True}
  assert workdir_lib.config_differences(old, final) == []
  assert workdir_lib.config_differences(old, {**old, "evaluate_test": False}) == [
      "evaluate_test"]
  assert sealed_test.run_reads_test(old) is True
  assert sealed_test.record_read_test({"config": old, "test": {"accuracy": 0.5}}) is True


def test_bad_switch_value_is_refused_before_anything_is_written(tiny_data_dir, tmp_path):
  config = tiny_config(tiny_data_dir)
  del config["evaluate_test"]  # a config file of one's own, not built on the defaults
  config.evaluate_test = "no"
  with pytest.raises(ValueError, match=r"config.evaluate_test='no' must be True or False"):
    train.train_and_evaluate(config, str(tmp_path / "w"))
  assert not os.path.exists(tmp_path / "w")


def _results_dir(tmp_path, name, evaluate_test, test_read):
  config = config_defaults.get_config()
  config.model.kwargs.update(dict(dim=16, depth=1, num_heads=2))
  config.evaluate_test = evaluate_test
  record = {"finished": True, "model": "customvit", "dataset": "d", "flaglimit": 8, "seed": 0,
            "train_examples": 16, "train_counts": {"a": 8, "b": 8}, "num_params": 123,
            "devices": 1, "platform": "cpu", "val": {"accuracy": 0.6},
            **sealed_test.read_fields(test_read), "workdir": str(tmp_path / name),
            "config": config.to_dict()}
  if test_read:
    record["test"] = {"accuracy": 0.5}
  (tmp_path / name).mkdir()
  (tmp_path / name / "results.json").write_text(json.dumps(record))
  return str(tmp_path / name)


def test_export_rows_refuses_test_of_a_screening_run(tmp_path):
  screen = _results_dir(tmp_path, "screen", evaluate_test=False, test_read=False)
  with pytest.raises(ValueError, match=rf"{screen} is a screening run.*without --with_test.*"
                     r"--config.evaluate_test=true"):
    export_rows.row(screen, "v", "base15", with_test=True)
  row = export_rows.row(screen, "v", "base15")
  assert "test" not in row and row["test_read"] is False and row["val"] == {"accuracy": 0.6}
  final = _results_dir(tmp_path, "final", evaluate_test=True, test_read=True)
  row = export_rows.row(final, "v", "base30", with_test=True)
  assert row["test"] == {"accuracy": 0.5} and row["test_read"] is True and row["test_read_at"]


def test_results_table_names_a_screening_run_and_tabulates_it_on_val(tmp_path):
  from cellvit_jax.experiments import results_table
  screen = os.path.join(_results_dir(tmp_path, "screen", evaluate_test=False, test_read=False),
                        "results.json")
  with pytest.raises(ValueError, match="a screening run .* pass --mean"):
    results_table.read_records([screen])
  (record,) = results_table.read_records([screen], results_table.REQUIRED_MEAN)
  assert "| 0.6000 | - |" in results_table.mean_markdown([record])
