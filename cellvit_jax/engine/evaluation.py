"""Metrics of a state on a whole split: `evaluate(eval_step, state, images, labels, ...)`.

`predict` gives the per-example predictions (what a run stores for paired comparisons) and
`score` their metrics, optionally with bootstrap intervals; `evaluate` is the two together.
"""
import jax
import numpy as np

from cellvit_jax import bootstrap, metrics, parallel
from cellvit_jax.data import pipeline


def predict(eval_step, state, images, labels, batch_size, mesh):
  """(predicted class per example, summed loss) of `state` on a whole split (fixed-shape,
  padded and masked batches)."""
  outs, counts = [], []
  for batch in pipeline.eval_batches(images, labels, batch_size):
    # Dispatched asynchronously and fetched once after the loop: the host prepares the next
    # batch while the device runs this one (a per-batch device_get would serialise them).
    outs.append(eval_step(state, parallel.shard_batch(batch, mesh)))
    counts.append(int(batch["mask"].sum()))
  outs = jax.device_get(outs)
  preds = [np.asarray(o["pred"])[:n] if jax.process_count() == 1 else np.asarray(o["pred"])
           for o, n in zip(outs, counts)]
  loss_sum = sum(float(o["loss_sum"]) for o in outs)  # batch order, as before
  return np.concatenate(preds)[:len(labels)], loss_sum


def score(labels, preds, loss_sum, class_names, intervals: bool = False) -> dict:
  """metrics.from_confusion's dict plus the mean loss; with `intervals`, the 95% bootstrap
  intervals (bootstrap.intervals: `accuracy_ci95`, ...) after the other keys."""
  result = metrics.from_confusion(metrics.confusion(labels, preds, len(class_names)), class_names)
  result["loss"] = loss_sum / max(len(labels), 1)
  if intervals:
    result.update(bootstrap.intervals(labels, preds, len(class_names)))
  return result


def evaluate(eval_step, state, images, labels, batch_size, mesh, class_names,
             intervals: bool = False) -> dict:
  """Metrics of `state` on a whole split (`score` of `predict`)."""
  preds, loss_sum = predict(eval_step, state, images, labels, batch_size, mesh)
  return score(labels, preds, loss_sum, class_names, intervals)
