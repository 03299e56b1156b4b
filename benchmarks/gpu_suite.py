"""The device check of issue 28 in one command: loop speed, time to the first step, k-step
compile, fair JAX/PyTorch step ratios and the default run's accuracy.

    python -m benchmarks.gpu_suite --out=DIR [--budget_s=470] [--only=step,step]
    python -m benchmarks.gpu_suite --out=DIR --smoke     # the same steps, tiny, on any host

Each step runs in its own process (so JAX's device memory is freed between them and the
suite process never takes the device), under its own time limit: a step that overruns is
killed, recorded as `timeout` with the seconds it was given, and the suite goes on. A step
that would start after --budget_s is recorded as `skipped`. Writes DIR/suite.json (every
step's command, status, seconds and figures, with device, jax version and code version) and
DIR/suite.md (the table), rewritten after every step, and each step's output in DIR/logs/.

Steps (full mode; sized for <= 8 minutes on one H100/H200 with the dataset built first):
- device: device kind and count, jax version (also the first CUDA start-up);
- dataset: synthetic_cells in the default data dir, built on first use (~40 s);
- train_customvit: the README's first run (configs/customvit.py), whole: loop images/s,
  time to the first step and its parts, test accuracy;
- train_customvit_hybrid, train_resnet18, train_densenet121: the same configs for 2 epochs
  (64 steps): loop images/s and time to the first step; DenseNet-121 fills a fresh
  compilation cache, and train_densenet121_seed1_cached starts a second seed from it;
- train_customvit_b1024: CustomViT at batch 1024 on FlagLimit 16,384 for 2 epochs (128 steps);
- multistep: benchmarks/multistep_compile (CustomViT, k = 16 against 1: compile seconds and
  rate of the dispatch the loop runs and of the lax.scan program); multistep_no_command_buffer:
  the same with XLA:GPU's command buffers off;
- train_step_customvit, train_step_resnet18: benchmarks/train_step at batch 1024 with the fair
  settings (TF32 as JAX's, channels_last, torch.compile) and the 8192 bf16 peak fractions.
--smoke: a tiny synthetic dataset in DIR/data, tiny models and a few steps; checks that the
suite runs end to end (a few minutes on a 2-core CPU; tests/test_gpu_suite.py).
"""
import json
import os
import signal
import subprocess
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_SPEC = {"num_specimens": 6, "cells_per_specimen": 64, "seed": 0, "val_specimens": 1,
              "test_specimens": 1, "nonspecific_fraction": 0.0}
# Tiny versions of each model for --smoke (config overrides).
SMOKE_MODELS = {
    "customvit": {"model.kwargs.dim": 16, "model.kwargs.depth": 1, "model.kwargs.num_heads": 2},
    "customvit_hybrid": {"model.kwargs.dim": 16, "model.kwargs.depth": 1,
                         "model.kwargs.num_heads": 2},
    "resnet18": {"model.kwargs.width": 8},
    "densenet121": {"model.kwargs.growth_rate": 4, "model.kwargs.num_init_features": 8,
                    "model.kwargs.block_config": "(1,1,1,1)"},
}


def define_flags():
  flags.DEFINE_string("out", "", "Output folder (suite.json, suite.md, logs/, runs/).")
  flags.DEFINE_bool("smoke", False, "Tiny dataset, models and step counts: the suite's own check.")
  flags.DEFINE_float("budget_s", 470.0, "Start no step after this many seconds (--smoke: 3x).")
  flags.DEFINE_list("only", [], "Run only these steps (names as in suite.json).")


def _overrides(pairs: dict) -> list:
  return [f"--config.{k}={v}" for k, v in pairs.items()]


def plan(out: str, smoke: bool) -> list:
  """[(name, argv, time limit in s, kind)] in the order they run."""
  py = sys.executable
  data = {}
  if smoke:
    data = {"dataset.name": "synthetic_cells_suite", "dataset.data_dir": os.path.join(out, "data"),
            "dataset.flaglimit": 64,
            **{f"dataset.synthetic.{k}": v for k, v in SMOKE_SPEC.items()}}
  common = {**data, "train.progress_bar": False, "compile_cache_dir": "off"}

  def train(name, config, limit, **extra):
    model = os.path.basename(config)[:-3]
    o = {**common, **(SMOKE_MODELS[model] if smoke else {}), **extra}
    if smoke:  # a few steps, evaluated once at the end
      o.update({"train.epochs": 0.0, "train.steps": 6, "train.batch_size": 16,
                "train.eval_batch_size": 64, "train.log_every_steps": 2,
                "train.eval_every_epochs": 1e6, "train.checkpoint_every_epochs": 1e6})
    workdir = os.path.join(out, "runs", name)
    return (name, [py, "-m", "cellvit_jax.main", f"--config=configs/{config}",
                   f"--workdir={workdir}", *_overrides(o)], limit, "train")

  two_epochs = {"train.epochs": 2.0, "train.eval_every_epochs": 2.0}
  dn_cache = {"compile_cache_dir": os.path.join(out, "jax_cache_densenet121")}
  steps = [
      ("device", [py, "-c", "import json, jax; d = jax.devices(); print(json.dumps({'device': "
                  "d[0].device_kind, 'count': len(d), 'platform': d[0].platform, "
                  "'jax': jax.__version__}))"], 60, "device"),
      ("dataset", [py, "-c", "from cellvit_jax.config import defaults; "
                   "from cellvit_jax.data import datasets; c = defaults.get_config(); "
                   + "".join(f"c.{k} = {v!r}; " for k, v in data.items()
                             if not k.startswith("dataset.synthetic."))
                   + "".join(f"c.dataset.synthetic.{k} = {v!r}; " for k, v in SMOKE_SPEC.items()
                             if smoke)
                   + "d = datasets.open_configured(c.dataset); print(d.name)"], 120, "dataset"),
      train("train_customvit", "customvit.py", 100),
      train("train_customvit_hybrid", "customvit_hybrid.py", 60, **two_epochs),
      train("train_resnet18", "resnet18.py", 60, **two_epochs),
      # Cold, filling a fresh compilation cache; then a second seed from that cache.
      train("train_densenet121", "densenet121.py", 90, **two_epochs, **dn_cache),
      train("train_densenet121_seed1_cached", "densenet121.py", 60, **two_epochs, **dn_cache,
            seed=1),
      train("train_customvit_b1024", "customvit.py", 60,
            **({"train.batch_size": 64} if smoke else
               {"dataset.flaglimit": 16384, "train.batch_size": 1024, **two_epochs})),
  ]
  def multistep(name):
    argv = [py, "-m", "benchmarks.multistep_compile", "--config=configs/customvit.py",
            f"--json={os.path.join(out, name + '.json')}"]
    if smoke:
      argv += ["--k=2", "--batch=8", "--calls=1",
               *[f"--set={k}={v}" for k, v in SMOKE_MODELS["customvit"].items()]]
    return argv

  steps.append(("multistep", multistep("multistep"), 90, "multistep"))
  # The same without XLA:GPU's command buffers (CUDA graphs), a suspect for the k-step
  # program's slowness on GPU (issue 28); on CPU the flag changes nothing.
  steps.append(("multistep_no_command_buffer",
                ["env", "XLA_FLAGS=--xla_gpu_enable_command_buffer=",
                 *multistep("multistep_no_command_buffer")], 90, "multistep"))
  for model in ("customvit", "resnet18"):
    ts = [py, "-m", "benchmarks.train_step", f"--model={model}",
          f"--json={os.path.join(out, f'train_step_{model}.json')}"]
    ts += (["--quick", "--batch=8", "--repeats=1", "--dtype=float32"] if smoke else
           ["--batch=1024", "--repeats=5", "--steps=10"])
    steps.append((f"train_step_{model}", ts, 150, "train_step"))  # two torch.compile
  if smoke:  # tiny, but every start pays the imports and compiles on a shared CPU
    steps = [(name, argv, 3 * limit, kind) for name, argv, limit, kind in steps]
  return steps


def run_step(argv, limit: float, log_path: str):
  """(status, seconds, rc): the command in its own process group, killed at `limit` s."""
  t0 = time.perf_counter()
  with open(log_path, "w") as log:
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
      rc = proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
      return "timeout", time.perf_counter() - t0, None
  return ("ok" if rc == 0 else "failed"), time.perf_counter() - t0, rc


def figures(kind: str, name: str, out: str, log_path: str) -> dict:
  """What a finished step measured, read from the files it wrote."""
  if kind == "device":
    with open(log_path) as f:
      lines = [line for line in f.read().splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}
  if kind == "train":
    path = os.path.join(out, "runs", name, "results.json")
    if not os.path.exists(path):
      return {}
    with open(path) as f:
      r = json.load(f)
    return {"images_per_sec": r.get("train_images_per_sec"),
            "time_to_first_step_s": r.get("time_to_first_step_seconds"),
            "first_dispatch_s": r.get("first_dispatch_seconds"),
            "startup_s": r.get("startup_seconds"), "steps": r.get("steps"),
            "batch": r["config"]["train"]["batch_size"],
            "steps_per_dispatch": r.get("steps_per_dispatch"),
            "test_accuracy": r["test"]["accuracy"], "platform": r.get("platform")}
  path = os.path.join(out, f"{name}.json") if kind in ("multistep", "train_step") else None
  if path and os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return {}


def _fmt(x, spec=".1f"):
  return "-" if x is None else format(x, spec)


def markdown(suite: dict) -> str:
  """The table of suite.json."""
  env = suite["environment"]
  lines = [f"# gpu_suite ({'smoke' if suite['smoke'] else 'full'})", "",
           f"device {env.get('device', '?')} x {env.get('count', '?')}, jax "
           f"{env.get('jax', '?')}, code {suite['code_version'] or '?'}, "
           f"{suite['seconds']:.0f} s in all", "",
           "| step | status | s (limit) | figures |", "|---|---|---|---|"]
  for row in suite["steps"]:
    f = row["figures"]
    if row["kind"] == "train" and f:
      what = (f"{_fmt(f['images_per_sec'])} img/s at batch {f['batch']}, k = "
              f"{f['steps_per_dispatch']}; first step at {_fmt(f['time_to_first_step_s'])} s "
              f"(first dispatch {_fmt(f['first_dispatch_s'])} s); test acc "
              f"{_fmt(f['test_accuracy'], '.4f')}")
    elif row["kind"] == "multistep" and f:
      what = "; ".join(f"{p}: compile {_fmt(v['compile_s'])} s (x{_fmt(v['compile_ratio'], '.2f')})"
                       f", rate x{_fmt(v['rate_ratio'], '.2f')}"
                       for p, v in f["programs"].items())
      what = f"k={f['k']} batch {f['batch']}: " + what
    elif row["kind"] == "train_step" and f:
      what = "; ".join(f"{k} {v:.2f}" for k, v in f["ratios"].items())
      what += "; peak fraction " + ", ".join(f"{k} {v:.3f}"
                                             for k, v in f["peak_fraction"].items())
    else:
      what = ""
    lines.append(f"| {row['name']} | {row['status']} | {row['seconds']:.0f} ({row['limit_s']:.0f})"
                 f" | {what} |")
  return "\n".join(lines) + "\n"


def run_suite(out: str, smoke: bool = False, budget_s: float = 470.0, only=()) -> dict:
  sys.path.insert(0, ROOT)
  from cellvit_jax import atomic_files
  from cellvit_jax.runs import provenance
  os.makedirs(os.path.join(out, "logs"), exist_ok=True)
  suite = {"smoke": smoke, "code_version": provenance.code_version(), "budget_s": budget_s,
           "host_load": os.popen("uptime").read().strip(), "environment": {}, "steps": [],
           "seconds": 0.0}
  t0 = time.perf_counter()
  for name, argv, limit, kind in plan(out, smoke):
    if only and name not in only:
      continue
    log_path = os.path.join(out, "logs", f"{name}.log")
    elapsed = time.perf_counter() - t0
    if elapsed >= budget_s:
      status, seconds, rc = "skipped", 0.0, None
    else:
      status, seconds, rc = run_step(argv, min(limit, budget_s - elapsed + 30), log_path)
    row = {"name": name, "kind": kind, "status": status, "seconds": round(seconds, 1),
           "limit_s": limit, "rc": rc, "argv": argv[1:],
           "figures": figures(kind, name, out, log_path) if status == "ok" else {}}
    if kind == "device":
      suite["environment"] = row["figures"]
    suite["steps"].append(row)
    suite["seconds"] = time.perf_counter() - t0
    print(f"{name}: {status} in {seconds:.0f} s", flush=True)
    atomic_files.write_json(out, "suite.json", suite)
    atomic_files.write_text(os.path.join(out, "suite.md"), markdown(suite))
  return suite


def main(argv):
  del argv
  args = flags.FLAGS
  if not args.out:
    raise SystemExit("--out=DIR is required (suite.json, suite.md and the logs go there)")
  budget = args.budget_s * (3 if args.smoke and not args["budget_s"].present else 1)
  suite = run_suite(os.path.abspath(args.out), args.smoke, budget, args.only)
  print(markdown(suite))


if __name__ == "__main__":
  define_flags()
  app.run(main)
