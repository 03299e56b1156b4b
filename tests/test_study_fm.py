"""FM rows in a study: probe and fine-tune cells on a tiny random phikon checkpoint run
through main.MODES like the small models, get their blur study (pre and post resize) and
cost at the FM's own input size, appear in the report, and predict new patches."""
import json
import os

import ml_collections
import pytest

import fixtures
from cellvit_jax import main
from cellvit_jax.config import files as config_files
from cellvit_jax.experiments import report
from cellvit_jax.models.fm import tiny as fm_tiny
from cellvit_jax.modes import predict, study
from conftest import REPO
from study_helpers import tiny_study_config


def test_fm_probe_and_finetune_rows(tiny_data_dir, tmp_path):
  weights = fm_tiny.write_tiny("phikon", str(tmp_path / "phikon"))
  fm_set = {"fm": {"weights": weights, "cache_dir": str(tmp_path / "cache"),
                   "feature_batch_size": 32, "probe_max_steps": 100}}
  config = tiny_study_config(tiny_data_dir, flaglimits=(32,))
  config.study.models = ml_collections.ConfigDict({
      "phikon_probe": {"config": "configs/fm.py:phikon,probe", "set": fm_set},
      "phikon_finetune": {"config": "configs/fm.py:phikon,finetune",
                          "set": {**fm_set, "train": {"batch_size": 32, "eval_batch_size": 64}}},
  })
  study_dir = str(tmp_path / "study")
  missing = ml_collections.ConfigDict(config.to_dict())
  missing.study.models.phikon_probe.set.fm.weights = str(tmp_path / "nowhere")
  with pytest.raises(ValueError, match="study row 'phikon_(probe|finetune)'.*nowhere"):
    study.run_mode(missing, study_dir, main.MODES)
  assert not os.path.exists(study_dir)
  summary = study.run_mode(config, study_dir, main.MODES)
  assert summary["finished"] == [0, 1] and summary["remaining"] == 0
  for row, mode in (("phikon_finetune", "finetune"), ("phikon_probe", "probe")):
    cell = os.path.join(study_dir, "runs", row, "fl32", "seed0")
    with open(os.path.join(cell, "cell.json")) as f:
      assert json.load(f)["mode"] == mode
    with open(os.path.join(cell, "blur", "blur.json")) as f:
      blur = json.load(f)
    assert blur["input_size"] != 40 and isinstance(blur["post_resize"], dict)  # FM resizes
    with open(os.path.join(study_dir, "cost", f"{row}.json")) as f:
      cost = json.load(f)
    assert cost["input_size"] == blur["input_size"] and cost["gflops_per_image"] > 0
  assert study.run_mode(config, study_dir, main.MODES)["skipped"] == [0, 1]
  with open(report.write_report(study_dir)["report.md"]) as f:
    md = f.read()
  assert "| phikon_probe |" in md and "| phikon_finetune |" in md

  # mode=predict on both FM runs.
  for i in range(3):
    fixtures.save(str(tmp_path / "new" / f"c{i}.png"), fixtures.patch(i))
  for row in ("phikon_probe", "phikon_finetune"):
    p = config_files.load(os.path.join(REPO, "configs", "predict.py"))
    p.predict.run = os.path.join(study_dir, "runs", row, "fl32", "seed0")
    p.predict.input = str(tmp_path / "new")
    with open(predict.run_mode(p, str(tmp_path / row))) as f:
      lines = f.read().splitlines()
    assert len(lines) == 4 and lines[0].startswith("path,predicted_class,predicted_index,prob_")
