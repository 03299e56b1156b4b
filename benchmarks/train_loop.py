"""End-to-end training images/s: the new loop (training subset on the device, k steps per
jitted call) vs the current one (host stream, one step per call), interleaved in one run.

    python -m benchmarks.train_loop [--cases=customvit,resnet18,small] \
        [--steps_per_dispatch=K] [--repeats=1] [--baseline_tree=DIR]

Each run is `train.train_and_evaluate` in a fresh process on a small synthetic_cells recipe
(`synthetic_cells_loopbench`, built once under $CELLVIT_DATA), and its number is what the
loop itself reports (results.json train_images_per_sec: training steps only, the first log
interval, which holds compilation, and evaluation excluded). Runs alternate current / new
within each repeat, so load changes on a shared machine hit both alike. Cases:
  customvit  configs/customvit.py as is (batch 128)
  resnet18   configs/resnet18.py as is (batch 128; few steps: seconds per step on a CPU)
  small      CustomViT width 32, depth 1, batch 32: a step short enough that the host loop shows
Current: --config.dataset.on_device=false --config.train.steps_per_dispatch=1 of this tree,
or, with --baseline_tree, the same config run by another checkout (e.g. a worktree of the
commit before the new loop, which knows neither key). New: on_device=auto (true here) at each
k of --steps_per_dispatch (default 1, the default config, and the case's own: 8, 2, 16).
Prints per case and k `new (k=K) / current = R` (the median of per-repeat ratios).
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = {"dataset.name": "synthetic_cells_loopbench", "dataset.synthetic.num_specimens": 30,
           "dataset.synthetic.cells_per_specimen": 400, "dataset.synthetic.val_specimens": 1,
           "dataset.synthetic.test_specimens": 1}
# (config file, overrides, steps, log_every, new steps_per_dispatch): the first fetch of
# metrics (compilation) is untimed, the rest timed; sized for a shared 2-core CPU.
CASES = {
    "customvit": ("configs/customvit.py", {}, 30, 10, 8),
    "resnet18": ("configs/resnet18.py", {}, 4, 2, 2),
    "small": ("configs/customvit.py", {"model.kwargs.dim": 32, "model.kwargs.depth": 1,
                                       "model.kwargs.num_heads": 2, "train.batch_size": 32},
              400, 100, 16),
}
RUN = """
import json, sys
sys.path.insert(0, {tree!r})
from cellvit_jax.config import files as config_file
from cellvit_jax.modes import train
config = config_file.load({config!r})
for key, value in {overrides!r}.items():
  node = config
  *parents, leaf = key.split(".")
  for p in parents:
    node = node[p]
  node[leaf] = value
r = train.train_and_evaluate(config, {workdir!r})
print("RESULT", json.dumps({{"ips": r["train_images_per_sec"],
                            "on_device": r.get("train_data_on_device"),
                            "k": r.get("steps_per_dispatch"),
                            "dtype": r["config"]["model"]["dtype"]}}))
"""


def run(tree, config, overrides, workdir):
  code = RUN.format(tree=tree, config=os.path.join(tree, config), overrides=overrides,
                    workdir=workdir)
  proc = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True,
                        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
  lines = [out for out in proc.stdout.splitlines() if out.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"run in {tree} failed:\n{proc.stderr[-3000:]}")
  return json.loads(lines[0][len("RESULT "):])


def define_flags():
  flags.DEFINE_string("cases", "customvit,resnet18,small", "Comma list of cases (CASES).")
  flags.DEFINE_string("steps_per_dispatch", "1,0",
                      "Comma list of k for the new loop, each run after the current one; "
                      "0: the case's own (CASES); 1 is the default config.")
  flags.DEFINE_integer("repeats", 1, "Repeats of each case (current, then new at each k).")
  flags.DEFINE_string("baseline_tree", "", "A checkout that runs the current loop.")


def main(argv):
  del argv
  args = flags.FLAGS
  cpu = os.popen("grep -m1 'model name' /proc/cpuinfo").read().strip()
  print(f"CPU: {cpu}")
  print(f"load (uptime): {os.popen('uptime').read().strip()}")
  baseline = os.path.abspath(args.baseline_tree) if args.baseline_tree else ROOT
  current_is = (baseline if args.baseline_tree
                else "this tree, on_device=false, steps_per_dispatch=1")
  print(f"current: {current_is}")
  sys.path.insert(0, ROOT)
  from cellvit_jax.config import defaults as config_defaults
  from cellvit_jax.data import datasets
  d = config_defaults.get_config().dataset
  for key, value in DATASET.items():
    node = d
    *parents, leaf = key.split(".")[1:]
    for p in parents:
      node = node[p]
    node[leaf] = value
  datasets.open_dataset(d.name, "", synthetic=datasets.synthetic_spec(d), log=print)  # built once
  tmp = tempfile.mkdtemp(prefix="train_loop_")
  for case in filter(None, args.cases.split(",")):
    config, overrides, steps, log_every, case_k = CASES[case]
    ks = [int(x) or case_k for x in args.steps_per_dispatch.split(",")]
    common = {**DATASET, **overrides, "train.epochs": 0.0, "train.steps": steps,
              "train.log_every_steps": log_every, "train.eval_every_epochs": 1000.0,
              "train.checkpoint_every_epochs": 1000.0, "train.progress_bar": False}
    current = dict(common) if args.baseline_tree else {
        **common, "dataset.on_device": "false", "train.steps_per_dispatch": 1}
    ratios = {k: [] for k in ks}
    for r in range(args.repeats):
      a = run(baseline, config, current, os.path.join(tmp, f"{case}_current_{r}"))
      print(f"{case} repeat {r}: current {a['ips']:.1f} img/s ({a})", flush=True)
      for k in ks:
        new = {**common, "dataset.on_device": "auto", "train.steps_per_dispatch": k}
        b = run(ROOT, config, new, os.path.join(tmp, f"{case}_new_k{k}_{r}"))
        ratios[k].append(b["ips"] / a["ips"])
        print(f"{case} repeat {r}: new k={k} {b['ips']:.1f} img/s ({b})", flush=True)
    for k in ks:
      print(f"{case}: new (k={k}) / current = {np.median(ratios[k]):.2f}  (per repeat "
            f"{', '.join(f'{x:.2f}' for x in ratios[k])})", flush=True)
  print(f"load after (uptime): {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
