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


def implied(labels, confusion_matrix) -> np.ndarray:
  """The predictions a confusion matrix fixes for `labels` (test-split order): where every true
  class's examples all fell in one predicted class (a perfect or a one-class run), each
  example's prediction is known; this lets rows written before this file existed be paired.
  Raises a ValueError where the matrix leaves them open (errors spread over a class)."""
  labels = np.asarray(labels, np.int64)
  cm = np.asarray(confusion_matrix, np.int64)
  support = np.bincount(labels, minlength=len(cm))
  if cm.shape != (len(cm), len(cm)) or not np.array_equal(cm.sum(axis=1), support):
    raise ValueError(f"confusion matrix {cm.tolist()} does not hold the labels' class counts "
                     f"{support.tolist()}: it is of another test set")
  open_rows = [c for c in range(len(cm)) if np.count_nonzero(cm[c]) > 1]
  if open_rows:
    raise ValueError(f"confusion matrix {cm.tolist()} leaves open which examples of true "
                     f"class(es) {open_rows} were misclassified; only the run's own "
                     f"{FILE} can pair it")
  return np.argmax(cm, axis=1)[labels]
