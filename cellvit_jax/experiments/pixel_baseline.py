"""Pixel logistic-regression baseline: is a dataset more than a colour lookup?

    python -m cellvit_jax.experiments.pixel_baseline --dataset=synthetic_cells --flaglimit=1024

Multinomial logistic regression on raw, standardised pixels of the FlagLimit training
subset, L2 strength chosen on val, accuracy on test. A model that learns shape (a ViT, a
CNN) should beat it clearly; if it does not, the task is mostly colour.

Like training, it refuses a dataset whose specimens appear in more than one split (their
patches would leak into test) unless --allow_shared_specimens is given.
"""
import json
import sys
import time

import numpy as np
from absl import app, flags

from cellvit_jax import atomic_files, metrics
from cellvit_jax.data import datasets, flaglimit, pipeline
from cellvit_jax.engine import logistic
from cellvit_jax.experiments import cost
from cellvit_jax.runs import provenance

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags, defined only when run as a program: tests import this module
  next to other CLIs, and absl flags are process-wide."""
  flags.DEFINE_string("dataset", "synthetic_cells", "Dataset name.")
  flags.DEFINE_string("data_dir", "",
                      "Dataset folder ($CELLVIT_DATA / ~/tensorflow_datasets if empty).")
  flags.DEFINE_list("flaglimit", ["1024"], "FlagLimit(s), samples per class.")
  flags.DEFINE_integer("seed", 0, "FlagLimit seed.")
  flags.DEFINE_list("l2", ["1e-3", "1e-2", "1e-1"], "L2 strengths tried; the best on val is kept.")
  flags.DEFINE_string("output", "", "Optional JSON file for the results.")
  flags.DEFINE_bool("allow_shared_specimens", False, "Fit even when a specimen has patches in more "
                    "than one split (as config.dataset.allow_shared_specimens in training).")


def _pixels(images):
  return images.reshape(len(images), -1).astype(np.float32) / 255.0


def baseline(dataset, limit: int, seed: int, l2_grid,
             allow_shared_specimens: bool = False) -> dict:
  """Fits on the FlagLimit subset of train; ValueError if specimens leak between splits."""
  datasets.refuse_shared_specimens(dataset, allow_shared_specimens)
  idx = flaglimit.select(dataset.labels("train"), limit, seed)
  x, y = pipeline.load_arrays(dataset.source("train"), idx)
  xv, yv = pipeline.load_arrays(dataset.source("val"), range(len(dataset.labels("val"))))
  xt, yt = pipeline.load_arrays(dataset.source("test"), range(len(dataset.labels("test"))))
  mean, std = logistic.standardize_stats(_pixels(x))
  norm = lambda a: (_pixels(a) - mean) / std
  t0 = time.perf_counter()
  params, l2, val_scores = logistic.fit_with_validation(norm(x), y, norm(xv), yv,
                                                       dataset.num_classes, l2_grid)
  test = metrics.from_confusion(metrics.confusion(yt, logistic.predict(params, norm(xt)),
                                                  dataset.num_classes), dataset.class_names)
  return {"dataset": dataset.name, "flaglimit": limit, "seed": seed, "l2": l2,
          "val_accuracy_by_l2": val_scores, "test": test,
          "fit_seconds": time.perf_counter() - t0, "host": cost.host_name(),
          "code_version": provenance.code_version()}


def main(argv):
  del argv
  dataset = datasets.open_dataset(FLAGS.dataset, FLAGS.data_dir)
  try:
    datasets.refuse_shared_specimens(dataset, FLAGS.allow_shared_specimens)
  except ValueError as e:
    sys.exit(f"error: {e} Here: pass --allow_shared_specimens.")
  out = [baseline(dataset, int(n), FLAGS.seed, [float(v) for v in FLAGS.l2],
                  FLAGS.allow_shared_specimens) for n in FLAGS.flaglimit]
  for r in out:
    print(f"pixel logistic regression on {r['dataset']}, FlagLimit {r['flaglimit']}: test accuracy "
          f"{r['test']['accuracy']:.4f}, balanced {r['test']['balanced_accuracy']:.4f}, "
          f"macro-F1 {r['test']['macro_f1']:.4f} (L2 {r['l2']:g} chosen on val)")
  if FLAGS.output:
    atomic_files.write_text(FLAGS.output, json.dumps(out, indent=2))


if __name__ == "__main__":
  define_flags()
  app.run(main)
