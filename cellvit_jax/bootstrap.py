"""95% bootstrap intervals of accuracy, balanced accuracy and macro-F1 by test-set resampling.

`intervals(labels, preds, num_classes)` -> {"accuracy_ci95": [lo, hi], ...}: the percentile
interval over `RESAMPLES` resamples of the examples (with replacement, fixed `SEED`), each
scored as metrics.from_confusion scores a split (classes absent from a resample's labels are
left out of its balanced accuracy and macro-F1).  `paired(labels, preds_a, preds_b, ...)`
applies the same resamples to two models' predictions on one test set and gives the interval
of the difference A - B.

Vectorised: a (resamples, n) index matrix drawn in row chunks (bounded memory; the chunks
concatenate to the single draw), and per-resample confusion counts from one bincount per
chunk; no loop over resamples.
"""
import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
_CHUNK_ELEMENTS = 1 << 22  # indices per chunk (32 MB of int64)


def index_chunks(n: int, resamples: int = RESAMPLES, seed: int = SEED):
  """Yields the rows of the (resamples, n) resample index matrix in chunks; every caller with
  the same (n, resamples, seed) gets the same indices, which is what pairs two runs."""
  rng = np.random.default_rng(seed)
  rows = max(1, _CHUNK_ELEMENTS // max(n, 1))
  for start in range(0, resamples, rows):
    yield rng.integers(0, n, size=(min(rows, resamples - start), n))


def stacked_metrics(cms: np.ndarray) -> dict:
  """metrics.from_confusion's accuracy, balanced accuracy and macro-F1 for a (R, K, K) stack of
  confusion matrices (rows: true class), each as an (R,) array."""
  cms = np.asarray(cms, np.float64)
  tp = np.diagonal(cms, axis1=1, axis2=2)
  support, predicted = cms.sum(axis=2), cms.sum(axis=1)
  present = support > 0
  recall = np.divide(tp, support, out=np.zeros_like(tp), where=present)
  precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
  n_present = present.sum(axis=1)
  total = cms.sum(axis=(1, 2))
  safe = lambda x, d: np.divide(x, d, out=np.zeros_like(x), where=d > 0)
  return {
      "accuracy": safe(tp.sum(axis=1), total),
      "balanced_accuracy": safe(np.where(present, recall, 0.0).sum(axis=1), n_present * 1.0),
      "macro_f1": safe(np.where(present, f1, 0.0).sum(axis=1), n_present * 1.0),
  }


def resampled_metrics(labels, preds_list, num_classes: int, resamples: int = RESAMPLES,
                      seed: int = SEED) -> list:
  """For each predictions array in `preds_list` (all for the same `labels`): its metrics on
  each resample, {metric: (resamples,) array}; every array sees the same resamples."""
  labels = np.asarray(labels, np.int64)
  k = num_classes
  codes = [labels * k + np.asarray(p, np.int64) for p in preds_list]
  out = [{m: [] for m in METRICS} for _ in codes]
  for idx in index_chunks(len(labels), resamples, seed):
    offsets = (np.arange(len(idx)) * k * k)[:, None]
    for code, acc in zip(codes, out):
      cms = np.bincount((code[idx] + offsets).ravel(), minlength=len(idx) * k * k)
      for m, v in stacked_metrics(cms.reshape(len(idx), k, k)).items():
        acc[m].append(v)
  return [{m: np.concatenate(v) for m, v in acc.items()} for acc in out]


def _check(labels, preds, num_classes, what):
  labels, preds = np.asarray(labels), np.asarray(preds)
  if labels.shape != preds.shape or labels.ndim != 1:
    raise ValueError(f"{what}: labels {labels.shape} and predictions {preds.shape} must be "
                     "1-D arrays of the same length (one per test example)")
  for name, a in (("labels", labels), ("predictions", preds)):
    if a.size and (a.min() < 0 or a.max() >= num_classes):
      raise ValueError(f"{what}: {name} must lie in [0, {num_classes}) (num_classes); got "
                       f"[{a.min()}, {a.max()}]")


def _percentiles(values: np.ndarray, level: float) -> list:
  tail = 100 * (1 - level) / 2
  return [float(v) for v in np.percentile(values, [tail, 100 - tail])]


def intervals(labels, preds, num_classes: int, resamples: int = RESAMPLES, seed: int = SEED,
              level: float = LEVEL) -> dict:
  """{"accuracy_ci95": [lo, hi], "balanced_accuracy_ci95": ..., "macro_f1_ci95": ...} (the
  key names the 95% level; other levels are named ci<level%>); {} for an empty split."""
  _check(labels, preds, num_classes, "bootstrap.intervals")
  if len(labels) == 0:
    return {}
  (values,) = resampled_metrics(labels, [preds], num_classes, resamples, seed)
  suffix = f"_ci{round(level * 100):d}"
  return {m + suffix: _percentiles(values[m], level) for m in METRICS}


def paired(labels, preds_a, preds_b, num_classes: int, resamples: int = RESAMPLES,
           seed: int = SEED, level: float = LEVEL) -> dict:
  """Paired bootstrap of A - B on one test set: {metric: {"a", "b", "difference", "ci"}},
  the difference's interval from the same resamples applied to both."""
  _check(labels, preds_a, num_classes, "bootstrap.paired (A)")
  _check(labels, preds_b, num_classes, "bootstrap.paired (B)")
  if len(labels) == 0:
    raise ValueError("bootstrap.paired: the test set is empty")
  k = num_classes
  labels = np.asarray(labels, np.int64)
  points = [stacked_metrics(np.bincount(labels * k + np.asarray(p, np.int64),
                                        minlength=k * k).reshape(1, k, k))
            for p in (preds_a, preds_b)]
  va, vb = resampled_metrics(labels, [preds_a, preds_b], num_classes, resamples, seed)
  return {m: {"a": float(points[0][m][0]), "b": float(points[1][m][0]),
              "difference": float(points[0][m][0] - points[1][m][0]),
              "ci": _percentiles(va[m] - vb[m], level)} for m in METRICS}
