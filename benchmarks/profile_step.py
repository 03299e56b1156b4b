"""Where the time of one JAX train step goes: a jax.profiler trace, summarised per XLA op.

    python -m benchmarks.profile_step --model=customvit [--dtype=float32] \
        [--batch=256] [--steps=2] [--top=15] [--logdir=/tmp/cellvit_profile]

Traces `--steps` train steps (the benchmark's step: benchmarks/train_step.jax_variant) with
`jax.profiler.trace(create_perfetto_trace=True)`, reads the Perfetto JSON it writes, and adds
up the durations of the XLA:CPU thunks (one event per executed HLO op or fusion). Each op is
classified from the optimised HLO of the compiled step (`compiled.as_text()`): 'matmul'
if it is or contains a dot, 'conv' for convolutions, 'exp/softmax' if it contains an
exponential, 'reduce' for other reductions (LayerNorm statistics, sums of the backward
pass, norms of the optimizer), 'elementwise' for the rest (GELU, Adam, transposes, copies).
Prints the share of each class and the top ops with their output shapes. The trace itself
stays in --logdir for TensorBoard / Perfetto.
"""
import collections
import glob
import gzip
import json
import os
import re

import jax
from absl import app, flags

from benchmarks import train_step
from cellvit_jax import parallel

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "customvit", "Registry model name (configs/<model>.py).")
flags.DEFINE_string("dtype", "float32", "Compute dtype of the step.")
flags.DEFINE_integer("batch", 256, "Batch size.")
flags.DEFINE_integer("steps", 2, "Train steps traced.")
flags.DEFINE_integer("top", 15, "How many of the slowest ops to list.")
flags.DEFINE_string("logdir", "/tmp/cellvit_profile", "Where the profiler trace is written.")

_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) (\w[\w\-]*)\(")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")
_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")


def parse_hlo(text: str):
  """-> {instruction: (opcode, shape, called computation or None)}, {computation: [opcodes]}."""
  instrs, comps, current = {}, collections.defaultdict(list), None
  for line in text.splitlines():
    m = _COMP.match(line)
    if m and "=" not in line.split("{")[0]:
      current = m.group(1)
      continue
    m = _INSTR.match(line)
    if m:
      name, shape, op = m.groups()
      calls = _CALLS.search(line)
      instrs[name] = (op, shape, calls.group(1) if calls else None)
      if current:
        comps[current].append((op, calls.group(1) if calls else None))
  return instrs, comps


def classify(name: str, instrs, comps) -> str:
  if name not in instrs:
    return "other"
  op, _, called = instrs[name]
  ops, todo, seen = {op}, [called] if called else [], set()
  while todo:  # opcodes of the called computation and of anything it calls
    c = todo.pop()
    if c in seen:
      continue
    seen.add(c)
    for o, sub in comps.get(c, ()):
      ops.add(o)
      if sub:
        todo.append(sub)
  if "dot" in ops:
    return "matmul+exp" if "exponential" in ops else "matmul"
  if "convolution" in ops:
    return "conv"
  if "exponential" in ops:
    return "exp/softmax"
  if ops & {"reduce", "reduce-window"}:
    return "reduce"
  return "elementwise"


def largest_array(shape: str) -> int:
  """Elements of the largest array in an HLO shape string ('f32[256,101,96]{2,1,0}' or a tuple)."""
  sizes = [1]
  for dims in re.findall(r"\[([\d,]*)\]", shape):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    sizes.append(n)
  return max(sizes)


def main(argv):
  del argv
  args = FLAGS

  print(f"load (uptime): {os.popen('uptime').read().strip()}")
  mesh = parallel.make_mesh()
  run, _, _, compiled = train_step.jax_variant(args.model, args.dtype, args.batch, mesh,
                                               return_compiled=True)
  instrs, comps = parse_hlo(compiled.as_text())
  logdir = os.path.join(args.logdir, f"{args.model}_{args.dtype}")
  with jax.profiler.trace(logdir, create_perfetto_trace=True):
    step_s = run(args.steps)
  trace = sorted(glob.glob(os.path.join(logdir, "**", "perfetto_trace.json.gz"),
                           recursive=True))[-1]
  with gzip.open(trace) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  per_op = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and not e["name"].startswith(("$", "ThunkExecutor")):
      per_op[e["name"]] += e.get("dur", 0) / 1e3 / args.steps  # ms per step
  total = sum(per_op.values())
  by_class = collections.Counter()
  for name, ms in per_op.items():
    by_class[classify(name, instrs, comps)] += ms
  print(f"{args.model} {args.dtype} batch {args.batch}: step {step_s * 1e3:.0f} ms under the "
        f"profiler; {total:.0f} ms of XLA ops per step in {len(per_op)} ops")
  for c, ms in by_class.most_common():
    print(f"  {c:12s} {ms:8.1f} ms  {ms / total:6.1%}")
  # Parameter-sized ops (outputs smaller than one activation map): the optimizer update,
  # gradient/parameter norms, bias gradients; their cost is per-op overhead, not FLOPs.
  small = [(n, ms) for n, ms in per_op.items()
           if largest_array(instrs.get(n, ("", "[]", None))[1]) < 100_000]
  small_ms = sum(ms for _, ms in small)
  print(f"  ops with outputs < 100k elements (optimizer, norms, bias grads): {len(small)} ops, "
        f"{small_ms:.1f} ms  {small_ms / total:6.1%}")
  # The elementwise class by fusion family (the name without its .N suffix): transposes and
  # copies that put dot operands into the layout the matmul kernels take show up here.
  families = collections.Counter()
  for name, ms in per_op.items():
    if classify(name, instrs, comps) == "elementwise":
      families[name.rsplit(".", 1)[0]] += ms
  print("  elementwise by fusion family:")
  for fam, ms in families.most_common(8):
    print(f"    {fam:28s} {ms:8.1f} ms  {ms / total:6.1%}")
  print(f"top {args.top} ops:")
  for name, ms in per_op.most_common(args.top):
    op, shape, _ = instrs.get(name, ("?", "?", None))
    print(f"  {ms:8.1f} ms  {classify(name, instrs, comps):12s} {name:28s} {op:12s} {shape}")
  print(f"trace: {trace}")


if __name__ == "__main__":
  app.run(main)
