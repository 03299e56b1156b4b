"""Speed of ops.blur.gaussian_blur inside a jitted step, as a ratio against the same step
without blur.

Baseline: uint8 -> float32 / 255 (what the step does before the model anyway).  Each
variant adds a per-sample-sigma blur (sigma ~ U(0, max_sigma), traced, static max_sigma)
or one scalar blur for the whole batch, with method 'conv' or 'matmul'.  Median of
`--repeats` timed calls after one warm-up (compile) call.  Machines are shared and noisy:
compare ratios taken in one run.

Part 'eval_step': the blur study's eval step (modes/blur_study.py, default CustomViT
of configs/customvit.py, batch 256, 40x40, per-sample sigma ~ U(0, 3)) in three variants,
each fed by the same grain pipeline over pre-made uint8 batches (the same ReadOptions as
the training stream, so host work may overlap the step) and sharded onto the device:
  none   the training eval step, no blur;
  fused  the blur inside the jitted step (ops.blur, method 'auto');
  host   scipy.ndimage.gaussian_filter per sample in a grain .map over the batch (float32
         out), then the no-blur step compiled for float32 input.
Time per batch = wall time over `--batches` batches / batches, median of `--rounds` rounds,
the variants interleaved round by round.  Prints two comparable lines:
  eval_step fused blur: ... ratio fused/none = R (goal <= 1.15)
  eval_step host blur:  ... ratio host/fused = R

  python -m benchmarks.blur [--part all|ops|eval_step] [--repeats 10] [--skip-conv]
"""
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cellvit_jax.ops import blur

FLAGS = flags.FLAGS
flags.DEFINE_enum("part", "all", ["all", "ops", "eval_step"], "Which part to time.")
flags.DEFINE_integer("repeats", 10, "ops: timed calls per case.")
flags.DEFINE_bool("skip-conv", False, "ops: skip method 'conv' (slow on XLA:CPU).")
flags.DEFINE_integer("batches", 4, "eval_step: batches per round.")
flags.DEFINE_integer("rounds", 3, "eval_step: rounds per variant.")

CASES = (  # (batch shape, max sigma): 40 px patches, and 224 px after the resize (x 224/40)
    ((256, 40, 40, 3), 3.0),
    ((32, 224, 224, 3), 3.0 * 224 / 40),
)


def median_ms(fn, args, repeats):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def ops_benchmark(args):
  for shape, max_sigma in CASES:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, shape, dtype=np.uint8))
    sigma = jnp.asarray(rng.uniform(0, max_sigma, shape[0]), jnp.float32)
    to_float = lambda x: x.astype(jnp.float32) / 255.0
    base = median_ms(jax.jit(to_float), (x,), args.repeats)
    print(f"{shape} max_sigma {max_sigma:.1f} (radius {blur.static_radius(max_sigma)}): "
          f"no blur {base:.2f} ms")
    for method in ("matmul",) if args["skip-conv"].value else ("matmul", "conv"):
      per_sample = jax.jit(lambda x, s, m=method: blur.gaussian_blur(
          to_float(x), s, max_sigma=max_sigma, method=m))
      scalar = jax.jit(lambda x, m=method: blur.gaussian_blur(to_float(x), max_sigma, method=m))
      for name, fn, fargs in (("per-sample sigma", per_sample, (x, sigma)),
                              ("scalar sigma", scalar, (x,))):
        ms = median_ms(fn, fargs, args.repeats)
        print(f"  {method:6s} {name:16s} {ms:9.2f} ms  = {ms / base:7.1f} x no blur, "
              f"{shape[0] / ms * 1e3:9.0f} img/s")


def _scipy_blur_batch(batch, truncate=3.0):
  """The host variant's grain map: per-sample scipy blur of a uint8 batch -> float32 [0, 255]."""
  from scipy import ndimage
  images = batch["image"].astype(np.float32)
  out = np.empty_like(images)
  for i, s in enumerate(batch["sigma"]):
    out[i] = ndimage.gaussian_filter(images[i], sigma=(s, s, 0), truncate=truncate,
                                     mode="reflect") if s > 0 else images[i]
  return {"image": out, "label": batch["label"], "mask": batch["mask"]}


def eval_step_benchmark(args):
  import grain

  from cellvit_jax.config import files as config_files
  from cellvit_jax import models, parallel
  from cellvit_jax.engine import optimizer, steps
  from cellvit_jax.modes import finished_run
  from cellvit_jax.data import datasets
  from cellvit_jax.modes import blur_study
  from cellvit_jax.models import dtypes

  batch_size, max_sigma, num_classes = 256, 3.0, 4
  config = config_files.load("configs/customvit.py")
  mesh = parallel.make_mesh()
  model = models.build(config.model.name, num_classes,
                       dtype=dtypes.compute_dtype(config.model.dtype), **config.model.kwargs)
  tx, schedule = optimizer.make_optimizer(config.optim, model, total_steps=100, steps_per_epoch=10)
  state = steps.create_state(jax.random.key(0), model, tx, 40, mesh)
  _, plain_step = steps.make_steps(model, schedule, mesh, config.optim, config.augment,
                                   config.normalize)
  dataset = datasets.CellDataset(name="bench", path="", meta={
      "patch_size": 40, "class_names": [f"c{i}" for i in range(num_classes)], "splits": {}})
  run = finished_run.Run(workdir="", config=config, dataset=dataset, model=model, state=state,
                         step=0,
                    total_steps=0, mesh=mesh)
  fused_step = blur_study.make_blur_eval_step(run, "pre_resize", max_sigma)

  rng = np.random.default_rng(0)
  batches = [{"image": rng.integers(0, 256, (batch_size, 40, 40, 3), dtype=np.uint8),
              "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
              "mask": np.ones(batch_size, bool),
              "sigma": rng.uniform(0, max_sigma, batch_size).astype(np.float32)}
             for _ in range(args.batches)]
  options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)

  def pipeline(host_blur, n=None):
    ds = grain.MapDataset.source(batches[:n])
    if host_blur:
      ds = ds.map(_scipy_blur_batch)
    return ds.to_iter_dataset(options)

  def run_none(n=None):
    for b in pipeline(False, n):
      out = plain_step(state,
                       parallel.shard_batch({k: b[k] for k in ("image", "label", "mask")}, mesh))
    return out

  def run_fused(n=None):
    for b in pipeline(False, n):
      sb = parallel.shard_batch(b, mesh)
      out = fused_step(state, {k: sb[k] for k in ("image", "label", "mask")}, sb["sigma"])
    return out

  def run_host(n=None):
    for b in pipeline(True, n):
      out = plain_step(state, parallel.shard_batch(b, mesh))
    return out

  variants = {"none": run_none, "fused": run_fused, "host": run_host}
  for fn in variants.values():  # compile (uint8 and float32 inputs) and warm up
    jax.block_until_ready(fn(1))
  times = {name: [] for name in variants}
  for _ in range(args.rounds):
    for name, fn in variants.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(1e3 * (time.perf_counter() - start) / args.batches)
  ms = {name: float(np.median(t)) for name, t in times.items()}
  start = time.perf_counter()
  for b in batches:
    _scipy_blur_batch(b)
  scipy_ms = 1e3 * (time.perf_counter() - start) / len(batches)
  where = (f"[default CustomViT, batch {batch_size}, 40x40, per-sample sigma U(0, {max_sigma:g}), "
           f"{jax.default_backend()}, median of {args.rounds} rounds x {args.batches} batches]")
  print(f"eval_step fused blur: {ms['fused']:.1f} ms/batch vs no blur {ms['none']:.1f} ms/batch, "
        f"ratio fused/none = {ms['fused'] / ms['none']:.3f} (goal <= 1.15) {where}")
  print(f"eval_step host blur: scipy gaussian_filter in a grain map {ms['host']:.1f} ms/batch vs "
        f"fused {ms['fused']:.1f} ms/batch, ratio host/fused = {ms['host'] / ms['fused']:.3f} "
        f"(scipy alone {scipy_ms:.1f} ms/batch) {where}")


def main(argv):
  del argv
  args = FLAGS
  print(f"backend {jax.default_backend()}, {jax.devices()[0].device_kind}")
  if args.part in ("all", "ops"):
    ops_benchmark(args)
  if args.part in ("all", "eval_step"):
    eval_step_benchmark(args)


if __name__ == "__main__":
  app.run(main)
