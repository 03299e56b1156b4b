"""Robustness of a trained run beyond blur: test metrics under graded perturbations.

    python -m cellvit_jax.main --config=configs/robustness.py --config.robustness.run=runs/customvit

Perturbations (ops/perturb.py, jnp, on the device inside the jitted eval step; the host
moves uint8 patches): stain (HED) jitter, brightness, contrast, JPEG quality, rotation by
non-right angles, Gaussian noise, each over a severity grid (configs/robustness.py,
docs/blur.md#robustness-beyond-blur).  Every perturbation acts on the native 40x40 patch,
before the resize to the model's input (what a scanner, stain batch or file format does to
every model alike).  Random perturbations draw from keys derived from `seed` and each
image's pixels, so the metrics do not depend on the batch size or order.

One jitted step serves the whole suite: it takes the perturbation's index (lax.switch) and
a (batch,) strength array, so the model is compiled once.  Writes <workdir>/robustness.json
(every row), robustness.csv (perturbation x severity -> accuracy, balanced accuracy,
macro-F1, loss) and robustness.png (accuracy vs severity level, one line per perturbation).
"""
import io
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from cellvit_jax import atomic_files, parallel
from cellvit_jax.data import pipeline
from cellvit_jax.engine import evaluation
from cellvit_jax.modes import blur_study, finished_run
from cellvit_jax.ops import normalize, perturb
from cellvit_jax.runs import sealed_test

# Severity grids (our choice; ordered mildest first): what each number means is in UNITS.
DEFAULT_SEVERITIES = {
    "hed": (0.05, 0.1, 0.2, 0.3, 0.5),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "contrast": (0.1, 0.2, 0.3, 0.4, 0.5),
    "jpeg": (90, 70, 50, 30, 10),
    "rotation": (5, 15, 25, 35, 45),
    "noise": (0.02, 0.04, 0.06, 0.08, 0.12),
}
UNITS = {
    "hed": "stain scale s: alpha ~ U(1-s, 1+s), beta ~ U(-s/10, s/10) per stain",
    "brightness": "factor 1 +- s (sign per image)",
    "contrast": "factor 1 +- s about the mean grey (sign per image)",
    "jpeg": "JPEG quality (lower is stronger)",
    "rotation": "degrees counter-clockwise, bilinear, reflect padding",
    "noise": "Gaussian standard deviation in [0, 1] intensity units",
}
# (low, high, low inclusive) of a valid severity.
_RANGES = {"hed": (0.0, 1.0, False), "brightness": (0.0, 1.0, False),
           "contrast": (0.0, 1.0, False), "jpeg": (1.0, 100.0, True),
           "rotation": (0.0, 180.0, False), "noise": (0.0, 1.0, False)}
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "loss")


def check_config(r) -> dict:
  """{perturbation: severities, mildest first} from config.robustness; ValueError naming the key."""
  if not isinstance(r.num_examples, int) or r.num_examples < 0:
    raise ValueError(f"config.robustness.num_examples={r.num_examples!r}: give a patch count "
                     ">= 0 (0: the whole split)")
  names = tuple(r.perturbations) if not isinstance(r.perturbations, str) else (r.perturbations,)
  if not names:
    raise ValueError("config.robustness.perturbations is empty; pass some of "
                     f"{', '.join(perturb.NAMES)}")
  unknown = [n for n in names if n not in perturb.NAMES]
  if unknown:
    raise ValueError(f"config.robustness.perturbations: unknown {unknown}; valid: "
                     f"{', '.join(perturb.NAMES)}")
  if len(set(names)) != len(names):
    raise ValueError(f"config.robustness.perturbations has repeats: {names}")
  grids = {}
  for name in names:
    key = f"config.robustness.severities.{name}"
    if name not in r.severities:
      raise ValueError(f"{key} is missing; give a tuple of severities, e.g. "
                       f"{DEFAULT_SEVERITIES[name]}")
    raw = r.severities[name]
    try:
      values = [float(v) for v in (raw if hasattr(raw, "__len__") else [raw])]
    except (TypeError, ValueError):
      raise ValueError(f"{key} must be a sequence of numbers, got {raw!r}") from None
    low, high, inclusive = _RANGES[name]
    bad = [v for v in values if not math.isfinite(v) or v > high
           or (v < low if inclusive else v <= low)]
    if bad or not values:
      raise ValueError(f"{key}={tuple(raw) if hasattr(raw, '__len__') else raw!r}: each "
                       f"severity must be in {'[' if inclusive else '('}{low:g}, {high:g}] "
                       f"({UNITS[name]}); bad: {bad or 'none given'}")
    if name == "jpeg" and any(v != round(v) for v in values):
      raise ValueError(f"{key}: JPEG qualities are integers, got {tuple(raw)}")
    if len(set(values)) != len(values):
      raise ValueError(f"{key} has repeated values: {tuple(raw)}")
    grids[name] = tuple(sorted(values, reverse=(name == "jpeg")))
  return grids


def make_eval_step(run, names, seed: int):
  """Jitted `(state, batch, which, strength) -> {'pred', 'loss_sum'}`: perturbation
  names[which] at per-sample strength (B,), on the native patch, then resize and forward."""
  branches = [lambda x, s, k, n=n: perturb.apply(n, x, s, k) for n in names]

  def step(state, batch, which, strength):
    keys = perturb.content_keys(seed, batch["image"])
    x = normalize.to_float(batch["image"])
    x = jax.lax.switch(which, branches, x, strength, keys)
    logits = run.forward(state, run.resize(x))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {"pred": jnp.argmax(logits, -1).astype(jnp.int32),
            "loss_sum": jnp.sum(jnp.where(batch["mask"], loss, 0.0))}

  rep, data = parallel.replicated(run.mesh), parallel.batch_sharding(run.mesh)
  return jax.jit(step, in_shardings=(rep, data, rep, data), out_shardings=rep)


def _row(result, base):
  row = {m: float(result[m]) for m in METRICS}
  row["relative_accuracy"] = row["accuracy"] / base if base > 0 else None
  return row


def subset(labels, num_examples: int, seed: int):
  """Indices of a class-stratified, seeded subset of about `num_examples` (sorted; all when
  num_examples is 0 or >= the split): each class keeps its share, rounded down, at least 1."""
  labels = np.asarray(labels)
  if num_examples <= 0 or num_examples >= len(labels):
    return np.arange(len(labels))
  rng = np.random.default_rng(seed)
  keep = []
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    k = max(1, int(num_examples * len(idx) // len(labels)))
    keep.append(rng.permutation(idx)[:k])
  return np.sort(np.concatenate(keep))


def study(run, grids: dict, *, seed: int = 0, split: str = "", batch_size: int = 0,
          num_examples: int = 0) -> dict:
  """Evaluates `run` on `split` (or its stratified subset of `num_examples`), clean and under
  every perturbation x severity."""
  split, batch_size, labels = blur_study.evaluated_split(run, split, batch_size, "robustness")
  split_size = len(labels)
  images, labels = pipeline.load_arrays(run.dataset.source(split),
                                        subset(labels, num_examples, seed))
  names = tuple(grids)
  step = make_eval_step(run, names, seed)
  local = parallel.local_batch_size(batch_size)

  def evaluate(which, strength):
    s = parallel.shard_batch({"s": np.full(local, strength, np.float32)}, run.mesh)["s"]
    w = jnp.int32(which)
    return evaluation.evaluate(lambda state, batch: step(state, batch, w, s), run.state,
                               images, labels, batch_size, run.mesh, run.dataset.class_names)

  clean = evaluate(0, 0.0)  # strength 0 is every perturbation's identity
  base = clean["accuracy"]
  logging.info("clean: accuracy %.4f", base)
  per = {}
  for i, name in enumerate(names):
    rows = []
    for level, sev in enumerate(grids[name], start=1):
      r = _row(evaluate(i, sev), base)
      rows.append({"level": level, "severity": sev, **r})
      logging.info("%s %g: accuracy %.4f", name, sev, r["accuracy"])
    per[name] = {"units": UNITS[name], "rows": rows}
  n = run.native_size
  return {
      "run": run.workdir, "model": run.config.model.name, "dataset": run.dataset.name,
      "split": split, **sealed_test.read_fields(split == run.config.dataset.test_split),
      "num_examples": int(len(labels)), "split_size": int(split_size),
      "step": run.step,
      "native_size": n, "input_size": run.input_size, "seed": seed,
      "applied": f"to the native {n}x{n} uint8 patch, before the resize to the model's input",
      "clean": _row(clean, base), "perturbations": per,
  }


def csv_text(result: dict) -> str:
  """perturbation,level,severity,<metrics>: one line per cell of the grid, clean first."""
  import csv
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(["perturbation", "level", "severity", *METRICS, "relative_accuracy"])
  c = result["clean"]
  w.writerow(["none", 0, 0, *[c[m] for m in METRICS], c["relative_accuracy"]])
  for name, block in result["perturbations"].items():
    for r in block["rows"]:
      w.writerow([name, r["level"], r["severity"], *[r[m] for m in METRICS],
                  r["relative_accuracy"]])
  return buf.getvalue()


def plot(result: dict, path: str):
  """Accuracy vs severity level (0 = clean), one line per perturbation, as a PNG, atomically."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  clean = result["clean"]["accuracy"]
  for name, block in result["perturbations"].items():
    rows = block["rows"]
    sev = ", ".join(f"{r['severity']:g}" for r in rows)
    ax.plot([0] + [r["level"] for r in rows], [clean] + [r["accuracy"] for r in rows], "o-",
            label=f"{name} ({sev})")
  ax.set_xlabel("severity level (0 = unperturbed)")
  blur_study.save_accuracy_plot(fig, ax, result, path, legend_size=7)


def table(result: dict) -> str:
  c = result["clean"]
  lines = [f"robustness of {result['run']} ({result['model']}), {result['split']} split, "
           f"{result['num_examples']} of {result['split_size']} patches; perturbed "
           f"{result['applied']}",
           f"  {'perturbation':<12} {'severity':>8}  {'accuracy':>8}  {'bal.acc':>8}  "
           f"{'macro-F1':>8}  {'rel.acc':>7}",
           f"  {'none':<12} {'':>8}  {c['accuracy']:8.4f}  {c['balanced_accuracy']:8.4f}  "
           f"{c['macro_f1']:8.4f}  {'1.000':>7}"]
  for name, block in result["perturbations"].items():
    for r in block["rows"]:
      rel = "n/a" if r["relative_accuracy"] is None else f"{r['relative_accuracy']:.3f}"
      lines.append(f"  {name:<12} {r['severity']:8g}  {r['accuracy']:8.4f}  "
                   f"{r['balanced_accuracy']:8.4f}  {r['macro_f1']:8.4f}  {rel:>7}")
  return "\n".join(lines)


def get_config_section(run_dir: str = "") -> ml_collections.ConfigDict:
  """configs/robustness.py's section with its defaults (the study builds its cells' from it)."""
  return ml_collections.ConfigDict(dict(
      run=run_dir,                            # workdir of a finished run (required)
      perturbations=tuple(DEFAULT_SEVERITIES),
      severities=ml_collections.ConfigDict(dict(DEFAULT_SEVERITIES)),
      seed=0,                                 # random perturbations and the subset
      # Class-stratified seeded subset of the split (0: all of it). 31 passes over the 6400
      # test patches of synthetic_cells would take ~3 min at CustomViT's ~1000 images/s on
      # 2 CPU cores; 2048 keeps the default suite under 2 min (benchmarks/RESULTS.md).
      num_examples=2048,
      split="",                               # "" -> the run's test split (val of a screening run)
      batch_size=0,                           # 0 -> the run's config.train.eval_batch_size
      data_dir="",                            # "" -> the run's config.dataset.data_dir
  ))


def run_mode(config, workdir: str = ""):
  """mode=robustness: config.robustness.run names the trained run; writes robustness.json,
  robustness.csv and robustness.png."""
  r = config.robustness
  if not r.run:
    raise ValueError("config.robustness.run is empty; pass the trained run's workdir, e.g. "
                     "--config.robustness.run=runs/customvit")
  grids = check_config(r)  # before anything is loaded
  run = finished_run.load_run(r.run, data_dir=r.data_dir or None)
  result = study(run, grids, seed=int(r.seed), split=r.split, batch_size=r.batch_size,
                 num_examples=r.num_examples)
  result["config"] = config.to_dict()
  workdir = os.path.abspath(workdir or os.path.join(run.workdir, "robustness"))
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    result["plot"], result["table"] = "robustness.png", "robustness.csv"
    atomic_files.write_text(os.path.join(workdir, "robustness.csv"), csv_text(result))
    plot(result, os.path.join(workdir, "robustness.png"))
    atomic_files.write_json(workdir, "robustness.json", result)  # last: marks the study done
    print("\n" + table(result))
    print(f"wrote {os.path.join(workdir, 'robustness.json')}, robustness.csv and robustness.png")
  return result
