"""CustomViT train step with its conv stem in each form: XLA convolutions, patch matmuls, mixed.

    python -m benchmarks.stem_impl [--patch_sizes=4,8] [--impls=matmul,mixed] [--batch=128]
        [--repeats=8]

`stem_impl` changes how the convstem's 3x3 convolutions are computed, not what
(models/conv_impl.py; same parameters, equal up to rounding). Every step is the library's
jitted train step (benchmarks/train_step.jax_variant) from configs/customvit.py, one per
patch size and form, timed one after the other in each repeat (interleaved), `--steps` steps
each, against the XLA-convolution step ('conv', the baseline).
Besides wall time it records the process CPU time of each timed block: on this shared 2-core
machine other jobs lengthen wall time, while CPU time counts only this process's work (XLA:CPU
runs in-process threads). Prints per patch size:
  stem_impl matmul/conv train-step speed (patch P) = R   (median of per-repeat CPU-time ratios)
"""
import os
import time

import jax
import numpy as np
from absl import app, flags

from benchmarks import train_step
from cellvit_jax import parallel

FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_list("patch_sizes", ["4", "8"], "CustomViT patch sizes to time.")
  flags.DEFINE_list("impls", ["matmul", "mixed"], "Forms to time against 'conv'.")
  flags.DEFINE_integer("batch", 128, "Batch size (the default config's).")
  flags.DEFINE_integer("repeats", 8, "Timed repeats (the two impls interleaved within each).")
  flags.DEFINE_integer("steps", 2, "Steps per timed block.")


def main(argv):
  del argv
  print(f"load (uptime): {os.popen('uptime').read().strip()}")
  print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}, jax {jax.__version__}")
  mesh = parallel.make_mesh()
  for p in (int(v) for v in FLAGS.patch_sizes):
    runs = {}
    for impl in ["conv"] + [i for i in FLAGS.impls if i != "conv"]:
      runs[impl], flops, params = train_step.jax_variant(
          "customvit", "float32", FLAGS.batch, mesh,
          model_kwargs={"patch_size": p, "stem_impl": impl})
      print(f"patch {p} stem_impl={impl}: {params:,} parameters, XLA FLOPs per step "
            f"{flops / 1e9:.1f} G")
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    for _ in range(FLAGS.repeats):
      for k, run in runs.items():
        c0 = time.process_time()
        wall[k].append(run(FLAGS.steps))
        cpu[k].append((time.process_time() - c0) / FLAGS.steps)
    for k in runs:
      print(f"patch {p} stem_impl={k:6s} wall {np.median(wall[k]) * 1e3:7.0f} ms/step "
            f"[{min(wall[k]) * 1e3:.0f}-{max(wall[k]) * 1e3:.0f}]  "
            f"CPU {np.median(cpu[k]) * 1e3:7.0f} ms/step "
            f"[{min(cpu[k]) * 1e3:.0f}-{max(cpu[k]) * 1e3:.0f}]")
    for k in list(runs)[1:]:
      ratio = np.array(cpu["conv"]) / np.array(cpu[k])
      wall_ratio = np.array(wall["conv"]) / np.array(wall[k])
      print(f"stem_impl {k}/conv train-step speed (patch {p}) = {np.median(ratio):.2f}  "
            f"(CPU time; per repeat {ratio.min():.2f}-{ratio.max():.2f}; wall time "
            f"{np.median(wall_ratio):.2f})")


if __name__ == "__main__":
  define_flags()
  app.run(main)
