"""mode=predict: apply a trained run to a folder or CSV of patches; write a CSV of predictions.

    python -m cellvit_jax.main --config=configs/predict.py \
        --config.predict.run=runs/customvit --config.predict.input=my_patches/ \
        [--workdir=out]                      # default <run>/predict/

Any run finished_run.load_run can load (a small model, an FM probe or fine-tune) works the same
way: patches go through the run's own resize and normalisation.  Batches are fixed-shape,
padded and masked, and sharded over every device like evaluation (one compilation).  Output
<workdir>/predictions.csv: the input's columns (path, and x, y or any other CSV columns),
then `predicted_class`, `predicted_index` and `prob_<class>` for every class.
"""
import csv
import io
import os

import jax
import numpy as np

from cellvit_jax import atomic_files, parallel
from cellvit_jax.data import patch_files, pipeline
from cellvit_jax.modes import finished_run


def make_predict_step(run):
  """Jitted (state, batch) -> softmax probabilities, batch sharded on 'data'."""
  def step(state, batch):
    return jax.nn.softmax(run.uint8_forward(state, batch["image"]), axis=-1)
  return jax.jit(step,
                 in_shardings=(parallel.replicated(run.mesh), parallel.batch_sharding(run.mesh)),
                 out_shardings=parallel.replicated(run.mesh))


def probabilities(run, images: np.ndarray, batch_size: int) -> np.ndarray:
  """(N, num_classes) float32 class probabilities of uint8 patches, in input order."""
  parallel.check_batch_size(batch_size, run.mesh, "config.predict.batch_size")
  step = make_predict_step(run)
  dummy = np.zeros(len(images), np.int32)
  # Every process holds all patches and takes its slice of each global batch; the
  # replicated output comes back in global order with padding only at the end.
  # All batches are dispatched before one fetch, as evaluation.evaluate does: no host sync per
  # batch.
  out = [step(run.state, parallel.shard_batch({"image": b["image"]}, run.mesh))
         for b in pipeline.eval_batches(images, dummy, batch_size)]
  out = [np.asarray(o) for o in jax.device_get(out)]
  return np.concatenate(out)[:len(images)] if out else np.zeros((0, run.dataset.num_classes))


def to_csv(patches, probs, class_names) -> str:
  buf = io.StringIO()
  header = (patches.columns + ["predicted_class", "predicted_index"]
            + [f"prob_{c}" for c in class_names])
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(header)
  pred = probs.argmax(-1)
  for row, p, k in zip(patches.rows, probs, pred):
    w.writerow([row[c] for c in patches.columns] + [class_names[k], int(k)]
               + [f"{v:.6f}" for v in p])
  return buf.getvalue()


def run_mode(config, workdir: str = "") -> str:
  """mode=predict; returns the path of predictions.csv."""
  p = config.predict
  if not p.run or not p.input:
    raise ValueError("mode=predict needs config.predict.run (a trained run's workdir) and "
                     "config.predict.input (a folder of patches or a CSV with a 'path' column)")
  if not os.path.exists(p.input):
    raise ValueError(f"config.predict.input {p.input!r} does not exist; pass a folder of patches "
                     "or a CSV file")
  run = finished_run.load_run(p.run, data_dir=p.data_dir or None)
  patches = patch_files.read_patches(p.input, run.native_size, resize=p.resize,
                                     skip_bad=p.skip_bad, path_column=p.path_column,
                                     x_column=p.x_column, y_column=p.y_column)
  probs = probabilities(run, patches.images, p.batch_size or run.config.train.eval_batch_size)
  out_dir = os.path.abspath(workdir or os.path.join(run.workdir, "predict"))
  path = os.path.join(out_dir, "predictions.csv")
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    atomic_files.write_text(path, to_csv(patches, probs, run.dataset.class_names))
    counts = np.bincount(probs.argmax(-1), minlength=run.dataset.num_classes)
    print(f"predicted {len(probs)} patch(es) with {run.config.model.name} ({run.workdir}): "
          + ", ".join(f"{c} {n}" for c, n in zip(run.dataset.class_names, counts.tolist()))
          + (f"; skipped {len(patches.skipped)} bad input(s)" if patches.skipped else "")
          + f"\nwrote {path}")
  return path
