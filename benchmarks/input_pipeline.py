"""Is the host input pipeline fast enough to keep the train step fed?

    python -m benchmarks.input_pipeline [--batch_size=128] [--data_dir=DIR]

Measures, in one run on this machine:
  * pipeline images/s: the training stream of cellvit_jax.data.pipeline.train_dataset
    (ArrayRecord decode via tfds.data_source, FlagLimit selection, per-epoch shuffle, batching
    to uint8 arrays) with config.dataset.cache off (the default: records decoded on every
    read) and on (the FlagLimit subset decoded once into memory; the one-off fill time is
    printed apart and not counted in the rate);
  * train-step images/s: the jitted CustomViT train step of cellvit_jax.engine.steps at the default
    configs/customvit.py model and optimiser, timed after compilation on a batch already on
    the device (so the pipeline is not in it).
and prints one comparable line

    input_pipeline: pipeline X img/s, train step Y img/s, ratio X/Y = Z (goal >= 20)

with X the default (cache off) pipeline.  The goal leaves the host idle most of the time on
an accelerator that is many times faster than this CPU; on a CPU-only machine the train step
is slow and the ratio is large.  The machines are shared: take ratios from one run, not
numbers from different runs.

Data: a small synthetic_cells dataset (`synthetic_cells_bench`, 20 specimens x 400 cells)
built by datasets.open_dataset in a temporary folder (or --data_dir, reused if present).
"""
import shutil
import tempfile
import time

from absl import app, flags

flags.DEFINE_string("data_dir", "", "Where to build/find synthetic_cells_bench; default: a "
                    "temporary folder removed at the end.")
flags.DEFINE_integer("batch_size", 128, "Global batch size (pipeline and train step).")
flags.DEFINE_integer("pipeline_batches", 60, "Batches timed per pipeline variant.")
flags.DEFINE_integer("train_steps", 8, "Train steps timed (after 2 compile/warm-up steps).")
flags.DEFINE_integer("flaglimit", 512, "FlagLimit of the training subset (default config's).")
FLAGS = flags.FLAGS

NAME = "synthetic_cells_bench"


def time_pipeline(source, subset, batch_size, batches, cache):
  """(images/s over `batches` batches after one warm-up batch, seconds to build the stream)."""
  from cellvit_jax.data import pipeline
  t0 = time.perf_counter()
  it = iter(pipeline.train_dataset(source, subset, global_batch=batch_size, seed=0, cache=cache))
  batch = next(it)                      # warm-up: threads start, first prefetch
  setup = time.perf_counter() - t0
  assert batch["image"].shape == (batch_size, 40, 40, 3) and batch["image"].dtype.name == "uint8"
  t0 = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  seconds = time.perf_counter() - t0
  return batches * batch_size / seconds, setup


def time_train_step(num_classes, image_size, batch, steps):
  """Images/s of the default CustomViT train step (compiled first, batch already on device)."""
  import jax
  import numpy as np

  from cellvit_jax.config import files as config_files
  from cellvit_jax import models, parallel
  from cellvit_jax.engine import optimizer
  from cellvit_jax.engine import steps as steps_lib
  from cellvit_jax.models import dtypes
  config = config_files.load("configs/customvit.py")
  mesh = parallel.make_mesh()
  model = models.build(config.model.name, num_classes,
                       dtype=dtypes.compute_dtype(config.model.dtype), **config.model.kwargs)
  tx, schedule = optimizer.make_optimizer(config.optim, model, total_steps=1000,
                                          steps_per_epoch=100)
  state = steps_lib.create_state(jax.random.key(0), model, tx, image_size, mesh)
  train_step, _ = steps_lib.make_steps(model, schedule, mesh, config.optim, config.augment,
                                       config.normalize)
  device_batch = parallel.shard_batch(batch, mesh)
  rng = jax.random.key(1)
  for i in range(2):                    # compile + one warm step
    state, m = train_step(state, device_batch, jax.random.fold_in(rng, i))
  jax.block_until_ready((state, m))
  t0 = time.perf_counter()
  for i in range(steps):
    state, m = train_step(state, device_batch, jax.random.fold_in(rng, 2 + i))
  jax.block_until_ready((state, m))
  seconds = time.perf_counter() - t0
  assert np.isfinite(float(m["loss"]))
  return steps * len(batch["label"]) / seconds, jax.devices()[0].platform


def main(argv):
  del argv
  from absl import logging
  logging.set_verbosity(logging.WARNING)
  from cellvit_jax.data import datasets, flaglimit, pipeline, synthetic_cells
  data_dir = FLAGS.data_dir or tempfile.mkdtemp(prefix="cellvit_bench_")
  try:
    spec = synthetic_cells.SyntheticSpec(num_specimens=20, cells_per_specimen=400,
                                         val_specimens=2, test_specimens=2)
    t0 = time.perf_counter()
    ds = datasets.open_dataset(NAME, data_dir, synthetic=spec, log=lambda *a: None)
    build_s = time.perf_counter() - t0
    labels = ds.labels("train")
    subset = flaglimit.select(labels, FLAGS.flaglimit, seed=0)
    source = ds.source("train")
    print(f"dataset {NAME}: {len(labels)} train patches, FlagLimit {FLAGS.flaglimit} -> "
          f"{len(subset)} ({build_s:.1f} s to build/open) in {data_dir}")
    rates = {}
    for cache in (False, True):
      rate, setup = time_pipeline(source, subset, FLAGS.batch_size, FLAGS.pipeline_batches,
                                  cache)
      rates[cache] = rate
      print(f"pipeline cache={'on ' if cache else 'off'}: {rate:9.0f} img/s over "
            f"{FLAGS.pipeline_batches} batches of {FLAGS.batch_size} "
            f"(setup + first batch {setup:.2f} s)")
    batch = next(iter(pipeline.train_dataset(source, subset, global_batch=FLAGS.batch_size,
                                             seed=0)))
    step_rate, platform = time_train_step(ds.num_classes, ds.image_size, batch, FLAGS.train_steps)
    print(f"train step (default CustomViT, batch {FLAGS.batch_size}, {platform}): "
          f"{step_rate:9.1f} img/s over {FLAGS.train_steps} steps after compilation")
    x = rates[False]
    print(f"input_pipeline: pipeline {x:.0f} img/s, train step {step_rate:.1f} img/s, "
          f"ratio X/Y = {x / step_rate:.1f} (goal >= 20)")
  finally:
    if not FLAGS.data_dir:
      shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
