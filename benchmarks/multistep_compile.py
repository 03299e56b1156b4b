"""Compile time and step rate of a k-step dispatch against one step, in one run.

    python -m benchmarks.multistep_compile --config=configs/customvit.py [--k=16]
        [--batch=N] [--variants=dispatch,scan,unroll] [--calls=2] [--json=FILE]
        [--set=model.kwargs.depth=1 ...]

Builds the model of --config on a random training subset held on the device, as the train
loop does (multistep.StepRunner with resident data, positions from the device chunk), and
times each program cold (lower + compile, JAX's persistent cache off), then its execution:
- one: the single-step program the loop runs at k = 1;
- dispatch: what StepRunner runs for a full k-step dispatch on this backend (fuses(): one
  lax.scan program on GPU/TPU; on CPU the single-step program k times, nothing more to
  compile), timed through StepRunner.run;
- scan / unroll: the fused k-step program, as a lax.scan or written out k times in the entry
  computation, forced on any backend (what `dispatch` would be if it always fused).
Execution: --calls dispatches of k steps after one warm-up dispatch, steps/s of the best.
Prints per variant compile seconds, `compile(v)/compile(one)` and `rate(v)/rate(one)`; the
issue-28 goal for the dispatch the loop runs is compile <= 2x one step's and rate >= 1x.
"""
import ast
import json
import os
import time

import jax
import numpy as np
from absl import app, flags

from cellvit_jax import models, parallel
from cellvit_jax.config import files as config_files
from cellvit_jax.data import index_stream, on_device
from cellvit_jax.engine import multistep, optimizer, steps

VARIANTS = ("dispatch", "scan", "unroll")


def define_flags():
  flags.DEFINE_string("config", "configs/customvit.py", "Config file (its model and optim).")
  flags.DEFINE_integer("k", 16, "Steps per dispatch.")
  flags.DEFINE_integer("batch", 0, "Global batch (0: the config's).")
  flags.DEFINE_list("variants", ["dispatch", "scan"], f"Any of {', '.join(VARIANTS)}.")
  flags.DEFINE_integer("calls", 2, "Timed dispatches of k steps per variant (0: compile only).")
  flags.DEFINE_string("json", "", "Also write the figures here.")
  flags.DEFINE_multi_string("set", [], "key=value: a dotted config override (repeatable), e.g. "
                            "model.kwargs.depth=1.")


def apply_overrides(config, pairs):
  """`config` with each 'a.b.c=value' of `pairs` set (value a Python literal, else a string)."""
  for pair in pairs:
    key, _, text = pair.partition("=")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _setup(config_path, batch, k, overrides=()):
  """Model, state, resident random data and the pure step of `config_path` at `batch`."""
  config = apply_overrides(config_files.load(config_path), overrides)
  batch = batch or config.train.batch_size
  config.model.dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
  model = models.from_config(config.model, config.get("fm"), 4)
  mesh = parallel.make_mesh()
  tx, schedule = optimizer.make_optimizer(config.optim, model, 1000, 100)
  rng = np.random.default_rng(0)
  n = max(4 * batch, 256)
  images = rng.integers(0, 256, (n, 40, 40, 3), dtype=np.uint8)
  labels = rng.integers(0, 4, n).astype(np.int32)
  data = on_device.place(images, labels, mesh)
  pure = steps.make_train_step(model, schedule, config.optim, config.augment, config.normalize)
  fresh_state = lambda: steps.create_state(jax.random.key(0), model, tx, 40, mesh)  # noqa: E731
  return dict(mesh=mesh, data=data, pure=pure, n=n, batch=batch, fresh_state=fresh_state,
              chunk_steps=max(256, k))


def _chunk(s, stream, step, chunk_steps):
  local = stream.positions(step, chunk_steps)
  return (jax.make_array_from_process_local_data(multistep.stacked_sharding(s["mesh"]), local),
          jax.device_put(np.int32(step), parallel.replicated(s["mesh"])))


def _compile_seconds(fn, *args):
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile()
  return time.perf_counter() - t0, compiled


def _rate(call, state, k, calls):
  """steps/s of the best of `calls` k-step dispatches after a warm-up; call(state) -> state."""
  state = jax.block_until_ready(call(state))
  best = None
  for _ in range(calls):
    t0 = time.perf_counter()
    state = jax.block_until_ready(call(state))
    best = min(best or 1e30, time.perf_counter() - t0)
  return k / best if best else None


def measure(config_path, k, batch=0, variants=("dispatch", "scan"), calls=2, overrides=()):
  """{'one': {...}, variant: {...}}: compile_s, steps_per_s and the ratios to 'one'."""
  s = _setup(config_path, batch, k, overrides)
  key = jax.random.key(1)
  stream = index_stream.IndexBatches(s["n"], global_batch=s["batch"], seed=0)
  chunk = _chunk(s, stream, 0, s["chunk_steps"])
  out = {}

  runner1 = multistep.StepRunner(None, s["pure"], s["mesh"], 1, s["data"])
  state = s["fresh_state"]()
  seconds, one = _compile_seconds(runner1._chunk_step, state, s["data"], *chunk, key)

  def single_steps(state):
    for _ in range(k):
      state, _ = one(state, s["data"], *chunk, key)
    return state
  out["one"] = dict(compile_s=seconds, steps_per_s=_rate(single_steps, state, k, calls)
                    if calls else None)

  for variant in variants:
    if variant not in VARIANTS:
      raise SystemExit(f"--variants: {variant!r} is not one of {VARIANTS}")
    state = s["fresh_state"]()
    if variant == "dispatch":
      runner = multistep.StepRunner(None, s["pure"], s["mesh"], k, s["data"],
                                    chunk_steps=s["chunk_steps"])
      fused = runner._fuse
      if fused:
        seconds, _ = _compile_seconds(runner._chunk_multi_step, state, s["data"], *chunk, key)
      else:  # the single-step program, already compiled for 'one': nothing more
        seconds = out["one"]["compile_s"]
      loop_stream = index_stream.IndexBatches(s["n"], global_batch=s["batch"], seed=0)

      def call(state, runner=runner, loop_stream=loop_stream):
        return runner.run(state, loop_stream, k, key, int(state.step))[0]
    else:
      fused = True
      fn = multistep.make_multi_step(s["pure"], s["mesh"], k, unroll=variant == "unroll")
      xs = multistep.stack_batches([{"index": p} for p in stream.positions(0, k)], s["mesh"])
      seconds, compiled = _compile_seconds(fn, state, s["data"], xs, key)

      def call(state, compiled=compiled, xs=xs):
        return compiled(state, s["data"], xs, key)[0]
    rate = _rate(call, state, k, calls) if calls else None
    out[variant] = dict(compile_s=seconds, steps_per_s=rate, fused=fused)
  for name, row in out.items():
    row["compile_ratio"] = row["compile_s"] / out["one"]["compile_s"]
    row["rate_ratio"] = (row["steps_per_s"] / out["one"]["steps_per_s"]
                         if row["steps_per_s"] and out["one"]["steps_per_s"] else None)
  return dict(config=config_path, k=k, batch=s["batch"], backend=jax.default_backend(),
              device=jax.devices()[0].device_kind, programs=out)


def format_rows(result) -> str:
  lines = [f"{result['config']} k={result['k']} batch={result['batch']} on "
           f"{result['device']} ({result['backend']})"]
  for name, row in result["programs"].items():
    rate = f"{row['steps_per_s']:.3f} steps/s" if row["steps_per_s"] else "not timed"
    ratio = f"{row['rate_ratio']:.2f}" if row["rate_ratio"] else "-"
    lines.append(f"  {name:9s} compile {row['compile_s']:7.1f} s  compile({name})/compile(one) = "
                 f"{row['compile_ratio']:.2f}  {rate}  rate({name})/rate(one) = {ratio}")
  return "\n".join(lines)


def main(argv):
  del argv
  args = flags.FLAGS
  jax.config.update("jax_enable_compilation_cache", False)  # cold compiles, every run
  result = measure(args.config, args.k, args.batch, args.variants, args.calls, args.set)
  print(format_rows(result), flush=True)
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
