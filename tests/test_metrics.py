import numpy as np

from cellvit_jax import metrics


def test_metrics_of_a_known_confusion_matrix():
  # true 0: 8 right, 2 as class 1; true 1: 5 right, 5 as class 2; true 2: 10 right.
  labels = [0] * 10 + [1] * 10 + [2] * 10
  preds = [0] * 8 + [1] * 2 + [1] * 5 + [2] * 5 + [2] * 10
  m = metrics.from_confusion(metrics.confusion(labels, preds, 3), ["a", "b", "c"])
  assert m["confusion_matrix"] == [[8, 2, 0], [0, 5, 5], [0, 0, 10]]
  assert np.isclose(m["accuracy"], 23 / 30)
  assert np.isclose(m["balanced_accuracy"], (0.8 + 0.5 + 1.0) / 3)
  f1 = [2 * 1.0 * 0.8 / 1.8, 2 * (5 / 7) * 0.5 / (5 / 7 + 0.5),
        2 * (10 / 15) * 1.0 / (10 / 15 + 1.0)]
  assert np.isclose(m["macro_f1"], np.mean(f1))
  assert m["per_class_recall"] == {"a": 0.8, "b": 0.5, "c": 1.0}


def test_absent_classes_are_left_out_not_counted_as_zero():
  m = metrics.from_confusion(metrics.confusion([0, 0, 1], [0, 0, 1], 3))
  assert m["balanced_accuracy"] == 1.0 and m["macro_f1"] == 1.0
  assert m["per_class_recall"]["2"] is None
