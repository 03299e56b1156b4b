"""Train-step images/s of a model: JAX (fp32 and bf16 compute) next to its PyTorch port.

    python -m benchmarks.train_step --model=customvit [--batch=256] \
        [--dtype=float32,bfloat16] [--repeats=5] [--steps=2] [--no-torch] [--no-compile]
    python -m benchmarks.train_step --model=customvit --quick

--quick: the same variants and ratio lines in about 2 minutes on a 2-core CPU (1 min 58 s
wall on a shared 2-core AMD EPYC Zen 3 at load average 5.5): batch 64, 5 repeats of
1 step, no torch.compile (its compilation alone takes 1.5 to 9 minutes on such a CPU), and
none of the matmul references that feed no ratio: the 4096 one, and the torch bf16 one, which
costs about a minute per 2048 matmul on a CPU without native bf16 (56 s on that Zen 3; with
the defaults, 4 such calls per repeat, about 19 minutes in all). Flags given explicitly still win.
Its ratios are at batch 64: compare them with other --quick runs, not with the batch-256
records.

JAX: the library's own jitted train step (steps.make_steps: uint8 batch -> flips/rot90 ->
normalise -> model -> label-smoothed cross-entropy -> grad-norm clip + AdamW, state donated),
built from configs/<model>.py with config.model.dtype set per variant (params stay fp32).
PyTorch: the same architecture from benchmarks/torch_ref/ (equal parameter count, printed),
eager mode, on CUDA when torch sees a GPU, the same step (uint8 -> per-sample dihedral ->
normalise -> forward -> label-smoothed CE -> backward -> clip_grad_norm_ -> AdamW with decay
on matrices only), fp32 and under torch.autocast(device, bfloat16); and the fp32 step under
torch.compile (inductor; on CPU it generates C++ and needs a compiler, gcc here), the
strongest PyTorch path a performance-minded user would pick: the forward with its loss is
compiled (AOTAutograd compiles the backward with it) and so is the clip + AdamW update.
Compilation happens in the warm-up step, outside the timing.

Timing: each repeat times `--steps` consecutive steps per variant (JAX dispatches them
asynchronously and is blocked on once at the end), the variants interleaved within the
repeat, so load changes on this shared machine hit all of them alike; the median over
repeats is reported. Compilation and one warm-up step are outside the timing.

Fair settings (printed): float32 precision is the same on both sides. JAX computes float32
matmuls and convolutions in TF32 on GPUs that have it (default precision); whether it does
here is measured (a float32 matmul's error against float64), and PyTorch's TF32 switches
(cuda.matmul and cuDNN) are set to match (`--fp32_precision=match`, the default), or both are
forced to full float32 (`--fp32_precision=highest`: jax_default_matmul_precision "highest",
TF32 off in PyTorch). The CNN ports run channels_last (NHWC, JAX's layout); on CUDA
torch.compile also times the bf16-autocast step.

Peak: FLOPs of the compiled train step from XLA's cost analysis (experiments.cost.xla_flops)
divided by the step time. On CPU, over the FLOP/s of a 2048x2048 jnp matmul of the same dtype
timed inside every repeat (median over repeats of the per-repeat fraction; a 4096 matmul is
timed once for reference). On accelerators, over the FLOP/s of an 8192x8192 bf16 matmul (the
device's dense bf16 peak, near its data-sheet figure), timed inside every repeat, for every
variant (the PyTorch ports have the same architecture, so the same FLOPs). Prints comparable
lines:
  JAX/PyTorch-fp32 = R             (JAX fp32 step vs PyTorch fp32 step)
  JAX-bf16/PyTorch-bf16 = R        (JAX bf16 compute vs PyTorch bf16 autocast)
  JAX/PyTorch-compile-fp32 = R     (JAX fp32 step vs torch.compile fp32 step)
  JAX-bf16/PyTorch-compile-bf16 = R  (on CUDA)
  fraction of measured matmul peak = F   (JAX fp32; CPU)
  fraction of 8192 bf16 matmul peak: <variant> = F   (accelerators, every variant)
"""
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cellvit_jax import models, parallel
from cellvit_jax.config import files as config_files
from cellvit_jax.engine import optimizer, steps
from cellvit_jax.experiments.cost import xla_flops
from cellvit_jax.models import dtypes as dtypes_lib

NUM_CLASSES = 4
IMAGE_SIZE = 40


def load(model_name: str):
  return config_files.load(os.path.join("configs", f"{model_name}.py"))


def matmul_flops_per_sec(dtype, n: int, repeats: int = 3) -> float:
  """FLOP/s of one jitted n x n x n jnp matmul (median of `repeats` after a warm-up)."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dtype)
  f = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(f(a, a))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(f(a, a))
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / float(np.median(times))


def torch_matmul_flops_per_sec(dtype, n: int, repeats: int = 3) -> float:
  import torch
  a = torch.randn(n, n).to(dtype)
  a @ a
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    a @ a
    times.append(time.perf_counter() - start)
  return 2 * n ** 3 / float(np.median(times))


def jax_variant(model_name: str, dtype: str, batch_size: int, mesh, return_compiled=False,
                model_kwargs=None):
  """-> (run(n): seconds per step over n steps, XLA FLOPs per step, parameter count[, compiled]).

  `model_kwargs` override keys of the config's model.kwargs (benchmarks/stem_impl.py)."""
  config = load(model_name)
  config.model.dtype = dtype
  config.model.kwargs.update(model_kwargs or {})
  model = models.build(model_name, NUM_CLASSES, dtype=dtypes_lib.compute_dtype(dtype),
                       **config.model.kwargs)
  tx, schedule = optimizer.make_optimizer(config.optim, model, total_steps=10_000,
                                          steps_per_epoch=100)
  train_step, _ = steps.make_steps(model, schedule, mesh, config.optim, config.augment,
                                   config.normalize)
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch({
      "image": rng.integers(0, 256, (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8),
      "label": rng.integers(0, NUM_CLASSES, (batch_size,), dtype=np.int32)}, mesh)
  holder = {"state": steps.create_state(jax.random.key(0), model, tx, IMAGE_SIZE, mesh)}
  key = jax.random.key(1)
  compiled = train_step.lower(holder["state"], batch, key).compile()
  flops = xla_flops(compiled)
  params = sum(x.size for x in jax.tree.leaves(holder["state"].params))

  def run(n: int) -> float:
    start = time.perf_counter()
    for i in range(n):  # async dispatch: no host sync until the end
      holder["state"], metrics = compiled(holder["state"], batch, jax.random.fold_in(key, i))
    jax.block_until_ready((holder["state"], metrics))
    return (time.perf_counter() - start) / n

  run(1)  # warm-up
  return (run, flops, params, compiled) if return_compiled else (run, flops, params)


CNN_PORTS = ("resnet18", "resnet50")  # torch_ref ports that are convolutional networks


def jax_fp32_uses_tf32() -> bool:
  """Whether a float32 jnp matmul at default precision computes in TF32 (10-bit mantissa):
  its relative error against float64 is then ~1e-3 rather than ~1e-6."""
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(256, 256)), rng.normal(size=(256, 256))
  got = np.asarray(jax.jit(jnp.matmul)(jnp.float32(a), jnp.float32(b)), np.float64)
  return float(np.abs(got - a @ b).max() / np.abs(a @ b).max()) > 1e-4


def set_fp32_precision(mode: str) -> str:
  """Makes JAX's and PyTorch's float32 compute alike ("match": PyTorch's TF32 switches follow
  what JAX does; "highest": both full float32); the line that says which."""
  if mode == "highest":
    jax.config.update("jax_default_matmul_precision", "highest")
  tf32 = jax_fp32_uses_tf32()
  try:
    import torch
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
  except ImportError:
    pass
  return (f"float32 precision: {mode}; JAX's float32 matmul {'uses' if tf32 else 'does not use'}"
          f" TF32 here, PyTorch's TF32 (matmul, cuDNN) set {'on' if tf32 else 'off'} to match")


def torch_variant(model_name: str, bf16: bool, batch_size: int, compile: bool = False):
  import torch
  import torch.nn.functional as F
  from benchmarks import torch_ref
  config = load(model_name)
  device = "cuda" if torch.cuda.is_available() else "cpu"  # the GPU when there is one, as JAX
  model = torch_ref.build(model_name, NUM_CLASSES, **config.model.kwargs).train().to(device)
  layout = torch.channels_last if model_name in CNN_PORTS else torch.contiguous_format
  model = model.to(memory_format=layout)
  o = config.optim
  decay = [p for p in model.parameters() if p.ndim > 1]
  no_decay = [p for p in model.parameters() if p.ndim <= 1]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=(o.b1, o.b2))
  mean = torch.tensor(config.normalize.mean, device=device).view(1, 3, 1, 1)
  std = torch.tensor(config.normalize.std, device=device).view(1, 3, 1, 1)
  rng = np.random.default_rng(0)
  images = torch.from_numpy(rng.integers(0, 256, (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3),
                                         dtype=np.uint8)).to(device)
  labels = torch.from_numpy(rng.integers(0, NUM_CLASSES, (batch_size,)).astype(np.int64)).to(device)

  def forward_loss(images, labels):
    x = images.permute(0, 3, 1, 2).float() / 255.0
    sel = lambda: (torch.rand(batch_size, device=device) < 0.5).view(-1, 1, 1, 1)
    x = torch.where(sel(), x.transpose(2, 3), x)
    x = torch.where(sel(), x.flip(2), x)
    x = torch.where(sel(), x.flip(3), x)
    x = ((x - mean) / std).contiguous(memory_format=layout)
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
      logits = model(x)
    return F.cross_entropy(logits.float(), labels, label_smoothing=o.label_smoothing)

  def update():
    if o.grad_clip:
      torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
    opt.step()

  if compile:
    forward_loss, update = torch.compile(forward_loss), torch.compile(update)

  def step():
    loss = forward_loss(images, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    update()

  def run(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      step()
    if device == "cuda":
      torch.cuda.synchronize()
    return (time.perf_counter() - start) / n

  run(1)
  return run, sum(p.numel() for p in model.parameters())


def define_flags():
  """Only when run as a program: benchmarks.step_variants imports this module (absl flags are
  process-wide)."""
  flags.DEFINE_enum("model", "customvit", models.names(), "Model config to time.")
  flags.DEFINE_integer("batch", 256, "Batch size.")
  flags.DEFINE_string("dtype", "float32,bfloat16", "JAX compute dtypes to time (comma-separated).")
  flags.DEFINE_integer("repeats", 5, "Timed repeats (variants interleaved within each).")
  flags.DEFINE_integer("steps", 2, "Steps per timed repeat.")
  flags.DEFINE_bool("no-torch", False, "Skip the PyTorch variants.")
  flags.DEFINE_bool("no-compile", False,
                    "Skip the torch.compile variant (its compilation takes minutes on CPU).")
  flags.DEFINE_string("json", "", "Also write images/s, ratios and peak fractions here.")
  flags.DEFINE_enum("fp32_precision", "match", ["match", "highest"],
                    "match: PyTorch's TF32 as JAX's float32 does on this device; highest: both "
                    "full float32.")
  flags.DEFINE_bool("quick", False,
                    "About 2 minutes on 2 CPU cores: batch 64, 5 repeats of 1 step, no "
                    "torch.compile, no matmul references that feed no ratio; explicit flags win.")


# --quick's settings; each applies unless its flag is given on the command line.
QUICK = {"batch": 64, "repeats": 5, "steps": 1, "no-compile": True}


def apply_quick(args) -> str:
  """Set QUICK's values on the flags not given explicitly; the line that says what changed."""
  for name, value in QUICK.items():
    if not args[name].present:
      args[name].value = value
  return (f"--quick: batch {args.batch}, {args.repeats} repeat(s) of {args.steps} step(s), "
          f"torch.compile {'skipped' if args['no-compile'].value else 'timed'}, no 4096 or torch "
          "bf16 matmul reference; ratios at this batch compare with other --quick runs only")


RATIOS = (("JAX/PyTorch-fp32", "torch float32", "jax float32"),
          ("JAX/PyTorch-compile-fp32", "torch compile float32", "jax float32"),
          ("PyTorch-compile/PyTorch-eager-fp32", "torch float32", "torch compile float32"),
          ("JAX-bf16/PyTorch-bf16", "torch bf16-autocast", "jax bfloat16"),
          ("JAX-bf16/PyTorch-compile-bf16", "torch compile bf16-autocast", "jax bfloat16"),
          ("JAX-bf16/JAX-fp32", "jax float32", "jax bfloat16"),
          ("PyTorch-bf16/PyTorch-fp32", "torch float32", "torch bf16-autocast"))


def _torch_variants(args, variants, accelerator):
  """Adds the PyTorch variants to `variants`; the port's parameter count."""
  import torch
  print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}"
        + (", channels_last" if args.model in CNN_PORTS else ""))
  for bf16 in (False, True):
    run, params = torch_variant(args.model, bf16, args.batch)
    variants["torch bf16-autocast" if bf16 else "torch float32"] = run
  if not args['no-compile'].value:
    for bf16 in (False, True) if accelerator else (False,):
      name = "torch compile bf16-autocast" if bf16 else "torch compile float32"
      t0 = time.perf_counter()
      try:
        variants[name], _ = torch_variant(args.model, bf16, args.batch, compile=True)
        print(f"torch.compile (inductor) {name[14:]}: compiled in "
              f"{time.perf_counter() - t0:.0f} s")
      except Exception as e:  # say what failed, keep the other variants
        print(f"torch.compile {name[14:]} failed after {time.perf_counter() - t0:.0f} s: "
              f"{type(e).__name__}: {' '.join(str(e).split())[:500]}")
  print(f"torch port: {params:,} parameters")


def main(argv):
  del argv
  args = flags.FLAGS

  print(f"load (uptime): {os.popen('uptime').read().strip()}")
  if args.quick:
    print(apply_quick(args))
  accelerator = jax.default_backend() != "cpu"
  print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()}, jax {jax.__version__}")
  print(set_fp32_precision(args.fp32_precision))
  mesh = parallel.make_mesh()
  dtypes = [d for d in args.dtype.split(",") if d]
  variants, flops = {}, {}
  for d in dtypes:
    run, flops[d], params = jax_variant(args.model, d, args.batch, mesh)
    variants[f"jax {d}"] = run
    print(f"{args.model}: {params:,} parameters; XLA FLOPs per train step ({d}) = "
          f"{flops[d] / 1e9:.1f} G ({flops[d] / args.batch / 1e9:.3f} G/image)")
  if not args['no-torch'].value:
    _torch_variants(args, variants, accelerator)

  # Matmul peaks are timed inside every repeat, next to the steps, so that a load change on
  # this shared machine moves the step time and the peak it is divided by together.
  peak_dtypes = {d: dtypes_lib.compute_dtype(d) for d in dtypes}
  if accelerator:
    peak_dtypes = {"bfloat16 8192": jnp.bfloat16}
  elif not args.quick:
    for d, jd in peak_dtypes.items():
      print(f"jnp matmul {d} 4096 (reference, once): "
            f"{matmul_flops_per_sec(jd, 4096, 2) / 1e9:.0f} GFLOP/s")
  times = {k: [] for k in variants}
  peaks = {d: [] for d in peak_dtypes}
  torch_peaks = {"float32": [], "bfloat16": []}
  torch_peak_dtypes = []
  if not args['no-torch'].value and not accelerator:
    import torch
    torch_peak_dtypes = [("float32", torch.float32)]
    if not args.quick:
      torch_peak_dtypes.append(("bfloat16", torch.bfloat16))
  for _ in range(args.repeats):
    for d, jd in peak_dtypes.items():
      peaks[d].append(matmul_flops_per_sec(jd, 8192 if accelerator else 2048))
    for name, td in torch_peak_dtypes:
      torch_peaks[name].append(torch_matmul_flops_per_sec(td, 2048))
    for k, run in variants.items():
      times[k].append(run(args.steps))
  for d, v in peaks.items():
    print(f"jnp matmul {d}{'' if accelerator else ' 2048'}: median {np.median(v) / 1e9:.0f} "
          f"GFLOP/s [{min(v) / 1e9:.0f}-{max(v) / 1e9:.0f}]")
  for name, v in torch_peaks.items():
    if v:
      print(f"torch matmul {name} 2048: median {np.median(v) / 1e9:.0f} GFLOP/s "
            f"[{min(v) / 1e9:.0f}-{max(v) / 1e9:.0f}]")
  step_s = {k: float(np.median(v)) for k, v in times.items()}
  summary = {"model": args.model, "batch": args.batch, "device": jax.devices()[0].device_kind,
             "fp32_precision": args.fp32_precision, "tf32": jax_fp32_uses_tf32(),
             "images_per_sec": {k: args.batch / s for k, s in step_s.items()},
             "ratios": {}, "peak_fraction": {}}
  for k, s in step_s.items():
    spread = f"[{min(times[k]) * 1e3:.0f}-{max(times[k]) * 1e3:.0f}]"
    print(f"{k:28s} step {s * 1e3:8.1f} ms {spread:>13s}  {args.batch / s:8.1f} img/s")
  # Ratios of the medians, and in brackets the range of the per-repeat ratios (the variants of
  # one repeat ran back to back, under nearly the same load).
  for label, num, den in RATIOS:
    if num in step_s and den in step_s:
      paired = np.array(times[num]) / np.array(times[den])
      summary["ratios"][label] = step_s[num] / step_s[den]
      print(f"{label} = {step_s[num] / step_s[den]:.2f}  (per repeat {paired.min():.2f}-"
            f"{paired.max():.2f})")
  if accelerator:  # every variant against the device's bf16 peak, per repeat
    step_flops = flops.get("float32", next(iter(flops.values())))
    peak = peaks["bfloat16 8192"]
    for k in times:
      fracs = [step_flops / t / p for t, p in zip(times[k], peak)]
      summary["peak_fraction"][k] = float(np.median(fracs))
      print(f"fraction of 8192 bf16 matmul peak: {k} = {np.median(fracs):.3f}  "
            f"[{min(fracs):.3f}-{max(fracs):.3f}]  ({step_flops / step_s[k] / 1e12:.1f} "
            "TFLOP/s achieved)")
  else:
    for d in dtypes:  # per repeat: achieved FLOP/s over that repeat's matmul FLOP/s
      fracs = [flops[d] / t / p for t, p in zip(times[f"jax {d}"], peaks[d])]
      summary["peak_fraction"][f"jax {d}"] = float(np.median(fracs))
      label = "fraction of measured matmul peak" + ("" if d == "float32" else f" ({d})")
      print(f"{label} = {np.median(fracs):.2f}  [{min(fracs):.2f}-{max(fracs):.2f}]  "
            f"({flops[d] / step_s[f'jax {d}'] / 1e9:.0f} GFLOP/s achieved)")
  print(f"load after (uptime): {os.popen('uptime').read().strip()}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(summary, f, indent=1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
