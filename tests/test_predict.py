"""mode=predict: folder and CSV inputs, agreement with evaluation, the CLI."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import fixtures
from cellvit_jax.config import files as config_files
from cellvit_jax.data import patch_files, pipeline
from cellvit_jax.modes import finished_run, predict
from conftest import REPO


def _read(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(tiny_trained_run):
  return finished_run.load_run(tiny_trained_run)


@pytest.fixture(scope="module")
def test_folder(run, tmp_path_factory):
  """The run's test split as ROOT/<class>/<i>.png, and its labels."""
  root = tmp_path_factory.mktemp("patches")
  labels = run.dataset.labels("test")
  images, labels = pipeline.load_arrays(run.dataset.source("test"), range(len(labels)))
  for i, (image, label) in enumerate(zip(images, labels)):
    d = root / run.dataset.class_names[label]
    d.mkdir(exist_ok=True)
    Image.fromarray(image).save(d / f"p{i:04d}.png")
  return str(root), images, labels


def test_folder_predictions_match_evaluation(run, test_folder, tiny_trained_run, tmp_path):
  root, images, labels = test_folder
  config = config_files.load(os.path.join(REPO, "configs", "predict.py"))
  config.predict.run, config.predict.input, config.predict.batch_size = tiny_trained_run, root, 48
  path = predict.run_mode(config, str(tmp_path / "out"))
  rows = _read(path)
  names = run.dataset.class_names
  assert list(rows[0]) == (["path", "predicted_class", "predicted_index"]
                           + [f"prob_{c}" for c in names])
  assert len(rows) == len(labels)
  probs = np.array([[float(r[f"prob_{c}"]) for c in names] for r in rows])
  np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
  # Same patches through run.logits (one batch, no padding) give the same classes.
  order = np.argsort([f"{names[label]}/p{i:04d}.png" for i, label in enumerate(labels)],
                     kind="stable")
  expected = np.asarray(run.logits(images[order])).argmax(-1)
  assert [int(r["predicted_index"]) for r in rows] == expected.tolist()
  assert all(r["predicted_class"] == names[int(r["predicted_index"])] for r in rows)
  # ... and the accuracy training reported on this split.
  truth = [r["path"].split("/")[0] for r in rows]
  accuracy = np.mean([t == r["predicted_class"] for t, r in zip(truth, rows)])
  with open(os.path.join(tiny_trained_run, "results.json")) as f:
    assert accuracy == pytest.approx(json.load(f)["test"]["accuracy"])


def test_csv_crops_keep_extra_columns_and_skip_bad(tmp_path):
  big = fixtures.blank(100, 120)
  fixtures.draw_square(big, 30, 40)
  fixtures.draw_square(big, 2, 97)          # near the corner: padded crop
  fixtures.save(str(tmp_path / "img" / "slide 1.png"), big)
  (tmp_path / "img" / "bad.png").write_bytes(b"not a png")
  fixtures.write_csv(str(tmp_path / "m.csv"), ["path", "x", "y", "cell_id"],
                     [["img/slide 1.png", 30, 40, "a"], ["img/bad.png", 5, 5, "b"],
                      ["img/slide 1.png", 2, 97, "c"]])
  with pytest.raises(ValueError, match=r"m.csv line 3: .*bad.png.*skip_bad"):
    patch_files.read_patches(str(tmp_path / "m.csv"), 40)
  p = patch_files.read_patches(str(tmp_path / "m.csv"), 40, skip_bad=True)
  assert p.columns == ["path", "x", "y", "cell_id"] and [r["cell_id"] for r in p.rows] == ["a", "c"]
  assert p.images.shape == (2, 40, 40, 3) and len(p.skipped) == 1
  assert fixtures.dark_centroid(p.images[0]) == (20, 20)
  assert tuple(p.images[1][20, 20]) == fixtures.FG  # padded crop, still centred on its cell
  with pytest.raises(ValueError, match="neither a folder nor a .csv"):
    patch_files.read_patches(str(tmp_path / "img" / "slide 1.png"), 40)
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="no image files"):
    patch_files.read_patches(str(tmp_path / "empty"), 40)


def test_cli_writes_predictions_csv(tiny_trained_run, tmp_path):
  for i in range(3):
    fixtures.save(str(tmp_path / "flat" / f"cell{i}.png"), fixtures.patch(i))
  proc = subprocess.run(
      [sys.executable, "-m", "cellvit_jax.main", "--config=configs/predict.py",
       f"--config.predict.run={tiny_trained_run}", f"--config.predict.input={tmp_path / 'flat'}",
       f"--workdir={tmp_path / 'out'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "PYTHONPATH": REPO})
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "predicted 3 patch(es)" in proc.stdout
  rows = _read(tmp_path / "out" / "predictions.csv")
  assert [r["path"] for r in rows] == ["cell0.png", "cell1.png", "cell2.png"]
  proc = subprocess.run(
      [sys.executable, "-m", "cellvit_jax.main", "--config=configs/predict.py",
       f"--config.predict.run={tiny_trained_run}", f"--config.predict.input={tmp_path / 'nope'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": REPO})
  assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
      "error: config.predict.input")
