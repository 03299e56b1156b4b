"""The per-example test predictions a finished run keeps beside results.json, for paired
bootstraps between runs (bootstrap.paired, `results_table --paired=A,B`).

    <workdir>/test_predictions.npz   labels, predictions (int32, test-split order),
                                     class_names, split, dataset

Written atomically before results.json, so a finished run always has both.
"""
import os

import numpy as np

from cellvit_jax import atomic_files

FILE = "test_predictions.npz"


def save(workdir: str, dataset: str, split: str, labels, preds, class_names) -> str:
  path = os.path.join(workdir, FILE)
  with atomic_files.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
      np.savez(f, labels=np.asarray(labels, np.int32), predictions=np.asarray(preds, np.int32),
               class_names=np.asarray(list(class_names), str), split=np.asarray(split),
               dataset=np.asarray(dataset))
  return path


def load(run: str) -> dict:
  """A run folder's (or an .npz path's) stored test predictions, as plain Python / numpy."""
  path = run if run.endswith(".npz") else os.path.join(run, FILE)
  if not os.path.exists(path):
    raise ValueError(f"{path} does not exist: {run!r} must be a finished run's workdir (runs "
                     f"finished by this version keep {FILE}) or such a file; rerun the run's "
                     "command in a fresh workdir to produce it")
  with np.load(path) as z:
    return {"path": path, "labels": z["labels"], "predictions": z["predictions"],
            "class_names": [str(c) for c in z["class_names"]], "split": str(z["split"]),
            "dataset": str(z["dataset"])}


def check_same_test_set(a: dict, b: dict):
  """Raises a ValueError naming both files unless `a` and `b` (load's dicts) score the same
  examples: same dataset, split, class names and labels in the same order."""
  problems = []
  for key in ("dataset", "split", "class_names"):
    if a[key] != b[key]:
      problems.append(f"{key} {a[key]!r} vs {b[key]!r}")
  if len(a["labels"]) != len(b["labels"]):
    problems.append(f"{len(a['labels'])} vs {len(b['labels'])} test examples")
  elif not np.array_equal(a["labels"], b["labels"]):
    first = int(np.flatnonzero(a["labels"] != b["labels"])[0])
    problems.append(f"labels differ (first at example {first})")
  if problems:
    raise ValueError(f"{a['path']} and {b['path']} are not predictions on the same test set ("
                     + "; ".join(problems) + "); a paired bootstrap needs two runs evaluated "
                     "on the same dataset build and test split: pass two such runs")
