"""Classification metrics from a confusion matrix, as a plain dict."""
import numpy as np


def confusion(labels, preds, num_classes: int) -> np.ndarray:
  """rows: true class, columns: predicted class."""
  labels = np.asarray(labels, np.int64)
  preds = np.asarray(preds, np.int64)
  return np.bincount(labels * num_classes + preds, minlength=num_classes ** 2).reshape(
      num_classes, num_classes)


def from_confusion(cm: np.ndarray, class_names=None) -> dict:
  """accuracy, balanced accuracy (mean recall over classes present), macro-F1, per-class recall.

  Classes absent from the labels are left out of the balanced accuracy and macro-F1 and
  get a recall of None, rather than counting as 0.
  """
  cm = np.asarray(cm, np.float64)
  total = cm.sum()
  tp = np.diag(cm)
  support = cm.sum(axis=1)
  predicted = cm.sum(axis=0)
  present = support > 0
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
  names = list(class_names) if class_names is not None else [str(i) for i in range(len(cm))]
  return {
      "accuracy": float(tp.sum() / total) if total else 0.0,
      "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
      "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
      "per_class_recall": {n: (float(r) if p else None) for n, r, p in zip(names, recall, present)},
      "confusion_matrix": cm.astype(np.int64).tolist(),
      "num_examples": int(total),
  }
