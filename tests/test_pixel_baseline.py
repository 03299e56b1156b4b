"""The pixel logistic-regression baseline refuses leaky datasets like training does, and
writes its results atomically."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cellvit_jax.data import datasets, tfds_writer
from cellvit_jax.experiments import pixel_baseline
from conftest import REPO


def _leaky_dataset(data_dir):
  """Two classes, specimen s1 in both train and test."""
  rng = np.random.default_rng(0)
  example = lambda s, label: dict(image=rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
                                  label=label, specimen=s, x=-1.0, y=-1.0, source="t")
  splits = {"train": [("s1", 0), ("s1", 1), ("s2", 0), ("s2", 1)],
            "val": [("s3", 0), ("s3", 1)], "test": [("s1", 0), ("s4", 1)]}
  tfds_writer.write(data_dir, "leaky", ["a", "b"],
                    {k: [example(s, label) for s, label in v] for k, v in splits.items()})


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "cellvit_jax.experiments.pixel_baseline", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


def test_refuses_shared_specimens_like_train_and_the_override_fits(tmp_path):
  data_dir = str(tmp_path / "data")
  _leaky_dataset(data_dir)
  dataset = datasets.open_dataset("leaky", data_dir)
  # The same guard and message as train.train_and_evaluate (tests/test_bad_inputs.py).
  with pytest.raises(ValueError, match=r"1 specimen\(s\) in more than one split, e.g. "
                                       r"\{'s1': \['train', 'test'\]\}"):
    pixel_baseline.baseline(dataset, 2, 0, [1e-2])
  out = str(tmp_path / "out.json")
  proc = _cli("--dataset=leaky", f"--data_dir={data_dir}", "--flaglimit=2", f"--output={out}")
  assert proc.returncode != 0 and not os.path.exists(out)
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: dataset 'leaky' has 1 specimen(s)") and \
      "--allow_shared_specimens" in last, proc.stderr
  proc = _cli("--dataset=leaky", f"--data_dir={data_dir}", "--flaglimit=2", f"--output={out}",
              "--allow_shared_specimens", "--l2=1e-2")
  assert proc.returncode == 0, proc.stderr
  with open(out) as f:
    results = json.load(f)
  assert [r["flaglimit"] for r in results] == [2] and results[0]["test"]["accuracy"] >= 0
  assert sorted(os.listdir(tmp_path)) == ["data", "out.json"]  # no temporary file left
