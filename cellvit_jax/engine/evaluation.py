"""Metrics of a state on a whole split: `evaluate(eval_step, state, images, labels, ...)`."""
import jax
import numpy as np

from cellvit_jax import metrics, parallel
from cellvit_jax.data import pipeline


def evaluate(eval_step, state, images, labels, batch_size, mesh, class_names) -> dict:
  """Metrics of `state` on a whole split (fixed-shape, padded and masked batches)."""
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
  preds = np.concatenate(preds)[:len(labels)]
  result = metrics.from_confusion(metrics.confusion(labels, preds, len(class_names)), class_names)
  result["loss"] = loss_sum / max(len(labels), 1)
  return result
