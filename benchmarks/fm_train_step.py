"""Fine-tuning step of a foundation model at 224x224: images/s and fraction of the device peak.

    python -m benchmarks.fm_train_step [--preset=phikon] [--batch=64] \
        [--dtype=float32,bfloat16] [--repeats=5] [--steps=10] [--method=full,lora]

The backbone is a random checkpoint of the preset's published size (phikon: ViT-B/16 at
224, written by models.fm_tiny.write_tiny with the full dimensions), so no weights are
needed: the speed does not depend on the values. The step is the library's own
(steps.make_steps on models.from_config of configs/fm.py:<preset>,finetune: uint8 40x40
batch -> flips/rot90 -> resize to 224 -> normalise -> backbone -> head -> loss -> clip +
AdamW with layer-wise lr decay, state donated), per compute dtype (params stay float32).

Peak: XLA's FLOPs of the compiled step over its time, divided by the FLOP/s of a large jnp
matmul of the same dtype measured in the same run (train_step.matmul_flops_per_sec).
Prints one comparable line per dtype and method (config.finetune.method; LoRA with
--lora_rank and --lora_targets on the frozen base, models/fm/lora.py):
  fm_train_step <preset> <dtype> <method>: trainable P, X img/s, Y TFLOP/s, fraction ... = F
and, with both methods, the ratios against full fine-tuning measured in the same run:
  fm_train_step <preset> <dtype>: lora/full step time = R, trainable params lora/full = T
"""
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from cellvit_jax import models, parallel
from cellvit_jax.config import files as config_files
from cellvit_jax.engine import optimizer, steps
from cellvit_jax.experiments.cost import xla_flops
from cellvit_jax.models.fm import tiny as fm_tiny
from benchmarks.train_step import matmul_flops_per_sec

# Published sizes (hidden, depth, heads, image, patch) of the presets' backbones.
SIZES = {"phikon": (768, 12, 12, 224, 16), "uni": (1024, 24, 16, 224, 16),
         "plip": (768, 12, 12, 224, 32)}

FLAGS = flags.FLAGS
flags.DEFINE_enum("preset", "phikon", sorted(SIZES), "Preset whose published size to build.")
flags.DEFINE_integer("batch", 64, "Batch size.")
flags.DEFINE_string("dtype", "float32,bfloat16", "Comma list of compute dtypes.")
flags.DEFINE_integer("repeats", 5, "Timed repeats.")
flags.DEFINE_integer("steps", 10, "Steps per timed repeat.")
flags.DEFINE_string("method", "full", "Comma list of config.finetune.method: full, lora.")
flags.DEFINE_integer("lora_rank", 8, "config.finetune.lora_rank.")
flags.DEFINE_string("lora_targets", "all", "config.finetune.lora_targets.")
flags.DEFINE_integer("matmul", 0, "Matmul side for the peak (0: 8192 on an accelerator, 2048 "
                     "on CPU).")


def main(argv):
  del argv
  a = FLAGS
  hidden, depth, heads, image, patch = SIZES[a.preset]
  weights = tempfile.mkdtemp(prefix=f"fm_{a.preset}_")
  fm_tiny.write_tiny(a.preset, weights, hidden=hidden, depth=depth, heads=heads,
                     image_size=image, patch_size=patch)
  mesh = parallel.make_mesh()
  n = a.matmul or (2048 if jax.devices()[0].platform == "cpu" else 8192)
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch({
      "image": rng.integers(0, 256, (a.batch, 40, 40, 3), dtype=np.uint8),
      "label": rng.integers(0, 4, a.batch).astype(np.int32)}, mesh)
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; {a.preset} "
        f"({hidden}x{depth}, patch {patch}, {image}x{image}), batch {a.batch}", flush=True)
  for dtype in a.dtype.split(","):
    measured = {}
    for method in a.method.split(","):
      measured[method] = _measure(a, weights, mesh, batch, dtype, method, n)
    if {"full", "lora"} <= set(measured):
      (t_full, p_full), (t_lora, p_lora) = measured["full"], measured["lora"]
      print(f"fm_train_step {a.preset} {dtype}: lora/full step time = {t_lora / t_full:.3f}, "
            f"trainable params lora/full = {p_lora:,}/{p_full:,} = {p_lora / p_full:.5f}",
            flush=True)


def _measure(a, weights, mesh, batch, dtype, method, n):
  """(median step seconds, trainable parameter count) of one compute dtype and method."""
  config = config_files.load(f"configs/fm.py:{a.preset},finetune")
  config.fm.weights = weights
  config.model.dtype = dtype
  config.finetune.method = method
  config.finetune.lora_rank = a.lora_rank
  config.finetune.lora_targets = a.lora_targets
  model = models.from_config(config.model, config.get("fm"), 4, config.finetune)
  tx, schedule = optimizer.make_optimizer(config.optim, model, 1000, 100)
  state = steps.create_state(jax.random.key(0), model, tx, 40, mesh)
  trainable = int(sum(x.size for x in jax.tree.leaves(state.params)))
  train_step, _ = steps.make_steps(model, schedule, mesh, config.optim, config.augment,
                                   config.normalize)
  flops = xla_flops(train_step.lower(state, batch, jax.random.key(0)).compile())
  state, m = train_step(state, batch, jax.random.key(0))  # compile + warm-up
  jax.block_until_ready(m)
  times, peaks = [], []
  for r in range(a.repeats):
    start = time.perf_counter()
    for i in range(a.steps):
      state, m = train_step(state, batch, jax.random.key(i))
    jax.block_until_ready(m)
    times.append((time.perf_counter() - start) / a.steps)
    peaks.append(matmul_flops_per_sec(dtype, n))
  step = float(np.median(times))
  achieved = flops / step
  print(f"fm_train_step {a.preset} {dtype} {method}: trainable {trainable:,}, "
        f"{a.batch / step:.1f} img/s ({step:.3f} s/step), "
        f"{achieved / 1e12:.2f} TFLOP/s ({flops / a.batch / 1e9:.1f} GFLOP per image), "
        f"fraction of measured matmul peak = {achieved / float(np.median(peaks)):.2f} "
        f"(matmul {n}: {float(np.median(peaks)) / 1e12:.1f} TFLOP/s)", flush=True)
  return step, trainable


if __name__ == "__main__":
  app.run(main)
