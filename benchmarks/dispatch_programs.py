"""Compile and call time of the programs a dispatch can run, to compare on one backend.

    python -m benchmarks.dispatch_programs --config=configs/resnet18.py --variant=plain --batch=8
    [--calls=3] [--hlo=FILE]

Variants: plain (steps.make_steps' jitted step on a streamed batch), gather (the same step
behind the on-device gather: multistep.StepRunner at k = 1 with resident data), unrollK and
scanK (multistep.make_multi_step: K steps unrolled into the entry computation, or a lax.scan
over them). One variant per process, so each compiles cold. --hlo writes the optimised HLO:
on XLA:CPU, count the convolutions whose dim_labels are not b01f_01io->b01f (those run as
naive loops; see benchmarks/FINDINGS.md, "loop bodies").
"""
import time

import jax
import numpy as np
from absl import app, flags

from cellvit_jax import models, parallel
from cellvit_jax.config import files as config_files
from cellvit_jax.data import on_device
from cellvit_jax.engine import multistep, optimizer, steps


def define_flags():
  flags.DEFINE_string("config", "configs/resnet18.py", "Config file.")
  flags.DEFINE_string("variant", "plain", "plain | gather | unrollK | scanK")
  flags.DEFINE_integer("batch", 8, "Batch size.")
  flags.DEFINE_integer("calls", 3, "Timed calls.")
  flags.DEFINE_string("hlo", "", "Write the optimised HLO text here.")


def main(argv):
  del argv
  args = flags.FLAGS
  config = config_files.load(args.config)
  config.model.dtype = "float32"
  model = models.from_config(config.model, config.get("fm"), 4)
  mesh = parallel.make_mesh()
  tx, schedule = optimizer.make_optimizer(config.optim, model, 100, 10)
  state = steps.create_state(jax.random.key(0), model, tx, 40, mesh)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (max(64, 4 * args.batch), 40, 40, 3), dtype=np.uint8)
  labels = rng.integers(0, 4, len(images)).astype(np.int32)
  data = on_device.place(images, labels, mesh)
  pure = steps.make_train_step(model, schedule, config.optim, config.augment, config.normalize)
  key, k = jax.random.key(1), 1
  t0 = time.perf_counter()
  if args.variant == "plain":
    fn, _ = steps.make_steps(model, schedule, mesh, config.optim, config.augment, config.normalize)
    batch = parallel.shard_batch({"image": images[:args.batch], "label": labels[:args.batch]}, mesh)
    call_args = (state, batch, key)
  elif args.variant == "gather":
    fn = multistep.StepRunner(None, pure, mesh, 1, data)._train_step
    index = parallel.shard_batch({"index": np.arange(args.batch, dtype=np.int32)}, mesh)
    call_args = (state, data, index, key)
  elif args.variant.startswith(("unroll", "scan")):
    k = int(args.variant.lstrip("unrolscan"))
    fn = multistep.make_multi_step(pure, mesh, k, unroll=args.variant.startswith("unroll"))
    xs = multistep.stack_batches(
        [{"index": (np.arange(args.batch) + i).astype(np.int32)} for i in range(k)], mesh)
    call_args = (state, data, xs, key)
  else:
    raise SystemExit(f"--variant={args.variant!r} is not plain, gather, unrollK or scanK")
  lowered = fn.lower(*call_args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  if args.hlo:
    with open(args.hlo, "w") as f:
      f.write(compiled.as_text())
  calls = []
  for _ in range(args.calls):
    start = time.perf_counter()
    out = compiled(*call_args)
    jax.block_until_ready(out)
    calls.append(time.perf_counter() - start)
    call_args = (out[0],) + call_args[1:]
  per_step = min(calls) / k
  print(f"{args.config} {args.variant} batch={args.batch} ({jax.default_backend()}): lower "
        f"{t1 - t0:.1f}s compile {t2 - t1:.1f}s calls {' '.join(f'{c:.2f}' for c in calls)}s; "
        f"best per step {per_step:.3f}s = {args.batch / per_step:.0f} img/s", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
