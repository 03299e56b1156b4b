"""Runs the speed benchmarks and writes benchmarks/RESULTS.md: each command line and its raw output.

    python -m benchmarks.record [--only=train_customvit,cost] [--output=benchmarks/RESULTS.md]

Every entry of BENCHMARKS is run in a fresh process from the repository root (so the
outputs are independent: no shared JIT caches or warm torch threads), with stdout and
stderr captured together, in order, and written verbatim under the command that produced
it, preceded by the date, the machine (CPU model, cores, bf16/AMX CPU flags, `uptime` load)
and the git commit. Copy a command to rerun one benchmark. Interpretation lives in
benchmarks/FINDINGS.md, written by hand from a recording; this file only records.
"""
import datetime
import os
import platform
import signal
import subprocess
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = "python"

BENCHMARKS = (  # (name, command, why)
    ("train_customvit",
     f"{PY} -m benchmarks.train_step --model=customvit --repeats=5 --steps=2",
     "Train step, CustomViT (default config), JAX fp32/bf16 vs PyTorch eager fp32/bf16-autocast "
     "and torch.compile fp32, batch 256."),
    ("train_customvit_eager",
     f"{PY} -m benchmarks.train_step --model=customvit --dtype=float32 --no-compile "
     "--repeats=5 --steps=2",
     "The same fp32 comparison without torch.compile (whose compile takes ~8 minutes on this "
     "CPU): a few minutes, for a rerun after a change to the step."),
    ("train_customvit_fp32",
     f"{PY} -m benchmarks.train_step --model=customvit --dtype=float32 --repeats=3 --steps=2",
     "JAX fp32 vs PyTorch eager and torch.compile fp32 (the strongest PyTorch path a user "
     "would pick), CustomViT default config, batch 256; the compile takes ~8 minutes here."),
    ("train_resnet18",
     f"{PY} -m benchmarks.train_step --model=resnet18 --batch=32 --repeats=3 --steps=1",
     "Train step, ResNet-18 (40x40 stem), same comparison, at batch 32: a batch-256 step takes "
     "tens of seconds on this shared 2-core CPU, too long for interleaved repeats here; rerun "
     "with --batch=256 on a faster device."),
    ("stem_impl", f"{PY} -m benchmarks.stem_impl",
     "CustomViT train step with the conv stem as XLA convolutions vs patch matmuls vs mixed "
     "(stem_impl), patch sizes 4 and 8, batch 128, interleaved; CPU time and wall time."),
    ("stem_convs", f"{PY} -m benchmarks.stem_convs",
     "The stem's four 3x3 convolutions alone (batch 256): forward, input and weight gradient "
     "in each conv form vs PyTorch's conv2d; the minimal reproduction behind stem_impl."),
    ("train_loop", f"{PY} -m benchmarks.train_loop",
     "End-to-end training images/s, new loop (training subset on the device, k steps per "
     "jitted call) vs the host-stream loop with one step per call, CustomViT and ResNet-18 "
     "(default configs) and a small CustomViT where the host loop shows, interleaved."),
    ("train_loop_resnet18", f"{PY} -m benchmarks.train_loop --cases=resnet18",
     "The train_loop comparison for ResNet-18 alone (default config, batch 128; 1.5-3 min a "
     "step on one core of our 2-core hosts): host stream k = 1 vs resident k = 1 and k = 2 "
     "(unrolled); run it with --timeout=3600."),
    ("loop_vs_step", f"{PY} -m benchmarks.loop_vs_step --parts",
     "The real train loop (train_and_evaluate) against its own jitted step on a ~2 ms CPU step: "
     "loop/step (goal >= 0.9) and the host time of each piece of a loop iteration."),
    ("profile_customvit_fp32", f"{PY} -m benchmarks.profile_step --model=customvit --dtype=float32",
     "Where the CustomViT fp32 train step spends its time (jax.profiler trace, per XLA op)."),
    ("profile_customvit_bf16",
     f"{PY} -m benchmarks.profile_step --model=customvit --dtype=bfloat16",
     "The same for bf16 compute."),
    ("step_variants", f"{PY} -m benchmarks.step_variants --repeats=4",
     "Candidate CustomViT step speed-ups (attention layouts, DropPath, flat optimiser) "
     "vs the library."),
    ("dense_layout", f"{PY} -m benchmarks.dense_layout",
     "Minimal reproduction: vjp of a Dense on 3-D tokens vs on their 2-D view (the transposed "
     "output-gradient copy XLA:CPU makes for the 3-D form), first design's qkv shape."),
    ("step_variants_dense", f"{PY} -m benchmarks.step_variants --variants=library,dense_3d "
     "--repeats=8 --plain",
     "The whole train step of the first design with the Dense layers on 2-D tokens (library) "
     "vs on 3-D tokens (the form before layers.token_dense)."),
    ("matmul_shapes", f"{PY} -m benchmarks.matmul_shapes --repeats=3",
     "GFLOP/s of the CustomViT step's matmul shapes, jnp vs torch, fp32 and bf16."),
    ("cost", f"{PY} -m cellvit_jax.experiments.cost --min_seconds=1 --configs=" + ",".join(
        f"configs/{m}.py" for m in ("customvit", "resnet18", "resnet50", "densenet121",
                                    "efficientnet_b0", "convnext_tiny")),
     "Inference cost (the study's cost table): parameters, GFLOPs/image, images/s at batch 1 "
     "and 256, config dtype (float32); six models here, the two transformers in cost_vit_swin "
     "(one run of all eight passes ten minutes on this shared CPU)."),
    ("cost_vit_swin", f"{PY} -m cellvit_jax.experiments.cost --min_seconds=1 "
     "--configs=configs/vit_small.py,configs/swin_tiny.py",
     "Inference cost of ViT-S and Swin-T, as above."),
)


def sh(cmd: str) -> str:
  try:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                          timeout=30).stdout.strip()
  except Exception as e:  # a missing tool must not stop the recording
    return f"({cmd!r} failed: {e})"


def machine() -> str:
  cpu = sh("lscpu | grep 'Model name' | sed 's/Model name: *//'")
  flags = sh("grep -o -w -E 'amx_bf16|amx_tile|avx512_bf16|avx512f|avx512_vnni' /proc/cpuinfo "
             "| sort -u | tr '\\n' ' '")
  versions = sh(PY + " -c 'import jax, torch; "
                "print(\"jax\", jax.__version__, \"torch\", torch.__version__)'")
  commit, branch = sh("git rev-parse --short HEAD"), sh("git rev-parse --abbrev-ref HEAD")
  return (f"- CPU: {cpu}; {os.cpu_count()} cores visible; bf16-relevant flags: {flags or 'none'}\n"
          f"- Python {platform.python_version()}; {versions}\n"
          f"- git: {commit} ({branch})")


def define_flags():
  flags.DEFINE_string("only", "", "Comma-separated names (default: all).")
  flags.DEFINE_string("output", os.path.join(ROOT, "benchmarks", "RESULTS.md"),
                      "Markdown file to write.")
  flags.DEFINE_bool("append", False,
                    "Append the runs to an existing --output instead of rewriting it.")
  flags.DEFINE_integer("timeout", 600, "Seconds per benchmark.")


def main(argv):
  del argv
  args = flags.FLAGS
  only = set(filter(None, args.only.split(",")))
  start = datetime.datetime.now(datetime.timezone.utc)
  header = [
      "# Speed benchmarks: recorded output\n",
      f"Written by `python -m benchmarks.record` (run from the repository root) on "
      f"{start:%Y-%m-%d %H:%M} UTC. Raw output of each command below; interpretation in "
      "[FINDINGS.md](FINDINGS.md). The machine is shared, so absolute numbers move with the "
      "load printed in each block; compare ratios taken within one block.\n",
      machine() + "\n",
      f"- load at start (uptime): {sh('uptime')}\n",
      "- GPU/TPU: none. The issue's GPU step needs a lent accelerator; this task was not lent "
      "one, so every number here is from the CPU.\n",
  ]
  if args.append:  # a later run of some entries, with its own date, commit and load
    header = [f"# Appended run, {start:%Y-%m-%d %H:%M} UTC\n", machine() + "\n",
              f"- load at start (uptime): {sh('uptime')}\n"]
  parts = list(header)
  for name, cmd, why in BENCHMARKS:
    if only and name not in only:
      continue
    print(f"== {name}: {cmd}", flush=True)
    t0 = time.time()
    # Its own process group, so a timeout stops the benchmark and every process it started
    # (killing the shell alone left them running, loading the machine for the next entry).
    proc = subprocess.Popen(cmd, shell=True, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
      out, _ = proc.communicate(timeout=args.timeout)
      rc = proc.returncode
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      out, _ = proc.communicate()
      rc = f"timeout after {args.timeout} s (raise --timeout)"
    wall = time.time() - t0
    print(out, flush=True)
    parts.append(f"## {name}\n\n{why}\n\n```\n$ {cmd}\n{out.rstrip()}\n```\n"
                 f"exit status {rc}, {wall:.0f} s wall.\n")
  parts.append(f"Finished {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
               f"load (uptime): {sh('uptime')}\n")
  with open(args.output, "a" if args.append else "w") as f:
    if args.append:
      f.write("\n")
    f.write("\n".join(parts))
  print(f"wrote {args.output}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
