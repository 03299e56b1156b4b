"""mode=robustness end to end on a tiny run, against independent references."""
import csv
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage import transform

from cellvit_jax import main
from cellvit_jax.data import pipeline
from cellvit_jax.modes import finished_run, robustness, train
from conftest import study_config, tiny_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _config(run_dir, **fields):
  return study_config("robustness.py", run_dir, **fields)


@pytest.fixture(scope="module")
def short_run(tiny_data_dir, tmp_path_factory):
  """A finished tiny CustomViT (a few steps: the suite's numbers need not be good, only right)."""
  workdir = str(tmp_path_factory.mktemp("robust") / "run")
  results = train.train_and_evaluate(
      tiny_config(tiny_data_dir, **{"train.epochs": 0.0, "train.steps": 6}), workdir)
  assert results["finished"]
  return workdir


@pytest.mark.parametrize("section, message", [
    ({"perturbations": ()}, "perturbations is empty"),
    ({"perturbations": ("jpeg", "fog")}, r"unknown \['fog'\]"),
    ({"perturbations": ("jpeg", "jpeg")}, "repeats"),
    ({"severities.jpeg": (90, 0)}, r"severities.jpeg=.*\[1, 100\]"),
    ({"severities.jpeg": (90.5, 50)}, "qualities are integers"),
    ({"severities.noise": (0.1, 0.1)}, "repeated"),
    ({"severities.rotation": (-5.0, 10.0)}, r"severities.rotation.*\(0, 180\]"),
    ({"severities.hed": (float("nan"),)}, "severities.hed"),
    ({"num_examples": -1}, "num_examples=-1"),
])
def test_bad_config_is_refused_before_loading(section, message, tmp_path):
  config = _config(str(tmp_path / "no run here"))
  for key, value in section.items():
    node = config.robustness
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  with pytest.raises(ValueError, match=message):
    main.run(config, str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


def test_empty_run_is_a_clear_error():
  with pytest.raises(ValueError, match="config.robustness.run is empty"):
    main.run(_config(""))


def test_stratified_subset_keeps_class_shares_and_is_seeded():
  labels = np.repeat(np.arange(4), [100, 200, 300, 400])
  idx = robustness.subset(labels, 100, seed=0)
  np.testing.assert_array_equal(np.bincount(labels[idx]), [10, 20, 30, 40])
  np.testing.assert_array_equal(idx, robustness.subset(labels, 100, seed=0))
  assert not np.array_equal(idx, robustness.subset(labels, 100, seed=1))
  assert len(robustness.subset(labels, 0, seed=0)) == 1000


def _reference_metrics(run, images01, labels):
  logits = np.asarray(run.forward(run.state, run.resize(jnp.asarray(images01, jnp.float32))))
  pred = logits.argmax(-1)
  # Plain numpy definitions (sklearn's, with 0 where a class is never predicted).
  classes = range(run.dataset.num_classes)
  recall = [np.mean(pred[labels == c] == c) for c in classes if np.any(labels == c)]
  f1 = []
  for c in classes:
    tp = np.sum((pred == c) & (labels == c))
    denom = np.sum(pred == c) + np.sum(labels == c)
    f1.append(2 * tp / denom if denom else 0.0)
  return {"accuracy": np.mean(pred == labels), "balanced_accuracy": np.mean(recall),
          "macro_f1": np.mean(f1)}


def test_robustness_mode_end_to_end(short_run, tmp_path, capsys):
  sev = {"jpeg": (80, 20), "rotation": (45.0, 30.0), "noise": (0.05,)}
  config = _config(short_run, perturbations=tuple(sev), num_examples=96, batch_size=32)
  for k, v in sev.items():
    config.robustness.severities[k] = v
  out_dir = str(tmp_path / "suite")
  main.run(config, out_dir)
  assert "rel.acc" in capsys.readouterr().out
  with open(os.path.join(out_dir, "robustness.json")) as f:
    result = json.load(f)
  assert result["num_examples"] == 96 and result["split_size"] > 96
  assert list(result["perturbations"]) == ["jpeg", "rotation", "noise"]
  jpeg_rows = result["perturbations"]["jpeg"]["rows"]
  assert [r["severity"] for r in jpeg_rows] == [80, 20]  # mildest first
  assert [r["severity"] for r in result["perturbations"]["rotation"]["rows"]] == [30.0, 45.0]

  # Independent references on the same subset: the clean metrics by sklearn, JPEG through PIL
  # at the same quality, rotation through skimage.
  run = finished_run.load_run(short_run)
  labels_all = run.dataset.labels("test")
  images, labels = pipeline.load_arrays(run.dataset.source("test"),
                                        robustness.subset(labels_all, 96, 0))
  n = len(labels)
  clean = _reference_metrics(run, images / 255.0, labels)
  for m in ("accuracy", "balanced_accuracy", "macro_f1"):
    assert result["clean"][m] == pytest.approx(clean[m], abs=1e-6), m
  rotated = np.stack([transform.rotate(im / 255.0, 45.0, order=1, mode="symmetric")
                      for im in images])
  ref = _reference_metrics(run, rotated, labels)
  row = result["perturbations"]["rotation"]["rows"][1]
  assert abs(row["accuracy"] - ref["accuracy"]) <= 1 / n  # a float32 tie may flip one patch

  import io

  def pil_jpeg(im, q):
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, format="JPEG", quality=q)
    return np.asarray(Image.open(buf)) / 255.0

  ref = _reference_metrics(run, np.stack([pil_jpeg(im, 20) for im in images]), labels)
  # Our JPEG is within ~1 grey level of PIL's (tests/test_perturb.py), which can move a few
  # borderline patches of a barely trained model.
  assert abs(jpeg_rows[1]["accuracy"] - ref["accuracy"]) <= 4 / n

  with open(os.path.join(out_dir, "robustness.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [(r["perturbation"], r["level"]) for r in rows] == [
      ("none", "0"), ("jpeg", "1"), ("jpeg", "2"), ("rotation", "1"), ("rotation", "2"),
      ("noise", "1")]
  assert float(rows[2]["accuracy"]) == pytest.approx(jpeg_rows[1]["accuracy"])
  assert float(rows[0]["relative_accuracy"]) == 1.0
  with open(os.path.join(out_dir, "robustness.png"), "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  assert not [f for f in os.listdir(out_dir) if f.startswith(".")]  # no temp files left


def test_metrics_do_not_depend_on_the_batch_size(short_run):
  run = finished_run.load_run(short_run)
  grids = {"noise": (0.1,), "hed": (0.3,), "brightness": (0.4,)}
  a = robustness.study(run, grids, batch_size=16, num_examples=48, seed=3)
  b = robustness.study(run, grids, batch_size=64, num_examples=48, seed=3)
  for name in grids:
    assert a["perturbations"][name]["rows"][0]["loss"] == pytest.approx(
        b["perturbations"][name]["rows"][0]["loss"], rel=1e-5), name
  # The random perturbations reach the model.
  assert a["perturbations"]["noise"]["rows"][0]["loss"] != pytest.approx(a["clean"]["loss"],
                                                                          rel=1e-6)


def test_study_runs_the_suite_when_enabled_and_the_report_shows_it(tiny_data_dir, tmp_path):
  import shutil

  from cellvit_jax.experiments import report
  from cellvit_jax.modes import study
  from study_helpers import tiny_study_config
  config = tiny_study_config(tiny_data_dir, rows=("customvit",), flaglimits=(32,))
  config.study.cost.enabled = False
  r = config.study.robustness
  r.enabled, r.perturbations, r.num_examples = True, ("rotation", "jpeg"), 32
  r.severities.rotation, r.severities.jpeg = (30.0,), (20,)
  study_dir = str(tmp_path / "study")
  study.run_mode(config, study_dir)
  cell_dir = study_grid_cell_dir(config, study_dir)
  with open(os.path.join(cell_dir, "robustness", "robustness.json")) as f:
    suite = json.load(f)
  assert suite["num_examples"] == 32 and list(suite["perturbations"]) == ["rotation", "jpeg"]

  out = report.write_report(study_dir)
  with open(out["robustness.csv"]) as f:
    rows = list(csv.DictReader(f))
  assert [(r["perturbation"], r["severity"]) for r in rows] == [("rotation", "30.0"),
                                                                ("jpeg", "20.0")]
  assert float(rows[0]["accuracy"]) == suite["perturbations"]["rotation"]["rows"][0]["accuracy"]
  with open(out["report.md"]) as f:
    md = f.read()
  assert "## Robustness beyond blur (FlagLimit 32)" in md
  assert f"{suite['clean']['accuracy']:.4f}" in md

  # Without the suite's output the report is as before: no section, no CSV.
  shutil.rmtree(os.path.join(cell_dir, "robustness"))
  os.remove(out["robustness.csv"])
  out = report.write_report(study_dir)
  assert "robustness.csv" not in out and not os.path.exists(
      os.path.join(os.path.dirname(out["report.md"]), "robustness.csv"))
  with open(out["report.md"]) as f:
    assert "Robustness beyond blur" not in f.read()


def study_grid_cell_dir(config, study_dir):
  from cellvit_jax.modes import study_grid
  (cell,) = study_grid.cells(config.study)
  return cell.workdir(study_dir)
