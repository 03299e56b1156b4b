"""Blur robustness of a trained run: test metrics over a grid of Gaussian blur sigmas.

    python -m cellvit_jax.main --config=configs/blur.py --config.blur.run=runs/customvit

Sigmas are in pixels of the native 40x40 patch.  Two placements of the blur:
  pre_resize   blur the 40x40 patch, then resize to the model's input (what a blurry scan
               gives every model alike);
  post_resize  resize first, then blur at the model's input resolution with the sigma
               scaled by input_size / 40 (the same physical blur, applied after upsampling).
For a model whose input is the 40x40 patch the two are the same computation: it runs once
and blur.json says so.

The blur runs inside one jitted eval step per placement, which takes a (batch,) sigma
array as an argument: one compilation serves the whole grid, and the host only moves
uint8 patches.  Writes <workdir>/blur.json and blur.png (accuracy vs sigma).
"""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from cellvit_jax import atomic_files, parallel
from cellvit_jax.data import pipeline
from cellvit_jax.engine import evaluation
from cellvit_jax.modes import finished_run
from cellvit_jax.ops import blur, normalize
from cellvit_jax.runs import sealed_test

DEFAULT_SIGMAS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
POSITIONS = ("pre_resize", "post_resize")


def check_sigmas(sigmas) -> tuple:
  """The grid as sorted floats; refuses negative, non-finite, repeated, < 2 values or no 0."""
  try:
    values = [float(s) for s in sigmas]
  except (TypeError, ValueError):
    raise ValueError(f"config.blur.sigmas must be a sequence of numbers, got {sigmas!r}") from None
  bad = [s for s in values if not math.isfinite(s) or s < 0]
  if bad:
    raise ValueError(f"config.blur.sigmas must be finite and >= 0 (a Gaussian's standard "
                     f"deviation in 40x40-pixel units); got {bad} in {tuple(sigmas)}")
  if len(set(values)) != len(values):
    raise ValueError(f"config.blur.sigmas has repeated values: {tuple(sigmas)}")
  if len(values) < 2 or 0.0 not in values:
    raise ValueError(f"config.blur.sigmas needs 0 (the unblurred baseline that relative accuracy "
                     f"divides by) and at least one sigma > 0; got {tuple(sigmas)}")
  return tuple(sorted(values))


def normalized_auc(sigmas, values):
  """Trapezoid area under values(sigma) divided by the sigma range: 1.0 for a flat 1.0 curve."""
  s, v = np.asarray(sigmas, np.float64), np.asarray(values, np.float64)
  return float(np.sum((s[1:] - s[:-1]) * (v[1:] + v[:-1]) / 2) / (s[-1] - s[0]))


def make_blur_eval_step(run, position: str, max_sigma: float, *, truncate: float = 3.0,
                        boundary: str = "reflect"):
  """Jitted `(state, batch, sigma) -> {'pred', 'loss_sum'}`, sigma a (batch,) array in 40 px units.

  position 'pre_resize' blurs the native patch; 'post_resize' blurs after run.resize, with
  sigma and max_sigma (the static kernel bound) scaled by input_size / native_size.
  """
  if position not in POSITIONS:
    raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
  scale = run.input_size / run.native_size

  def step(state, batch, sigma):
    x = normalize.to_float(batch["image"])
    if position == "pre_resize":
      x = blur.gaussian_blur(x, sigma, max_sigma=max_sigma, truncate=truncate, mode=boundary)
    x = run.resize(x)
    if position == "post_resize":
      x = blur.gaussian_blur(x, sigma * scale, max_sigma=max_sigma * scale, truncate=truncate,
                             mode=boundary)
    logits = run.forward(state, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {"pred": jnp.argmax(logits, -1).astype(jnp.int32),
            "loss_sum": jnp.sum(jnp.where(batch["mask"], loss, 0.0))}

  rep, data = parallel.replicated(run.mesh), parallel.batch_sharding(run.mesh)
  return jax.jit(step, in_shardings=(rep, data, data), out_shardings=rep)


def evaluate_grid(run, images, labels, sigmas, position, *, batch_size, truncate=3.0,
                  boundary="reflect"):
  """Per-sigma metrics dicts (evaluation.evaluate's) for one placement of the blur."""
  step = make_blur_eval_step(run, position, max(sigmas), truncate=truncate, boundary=boundary)
  local = parallel.local_batch_size(batch_size)
  out = []
  for s in sigmas:
    sigma = parallel.shard_batch({"sigma": np.full(local, s, np.float32)}, run.mesh)["sigma"]
    out.append(evaluation.evaluate(lambda state, batch: step(state, batch, sigma), run.state,
                                   images, labels, batch_size, run.mesh, run.dataset.class_names))
    logging.info("%s sigma %.2f: accuracy %.4f", position, s, out[-1]["accuracy"])
  return out


def _summarise(sigmas, results, scale, truncate):
  base = results[0]["accuracy"]  # sigmas are sorted and start at 0
  rows = []
  for s, r in zip(sigmas, results):
    rows.append({
        "sigma": s,                               # 40x40-pixel units
        "sigma_at_blur": s * scale,               # pixels of the image the blur ran on
        "kernel_radius": blur.kernel_radius(s * scale, truncate),
        "accuracy": r["accuracy"],
        "balanced_accuracy": r["balanced_accuracy"],
        "macro_f1": r["macro_f1"],
        "loss": r["loss"],
        "relative_accuracy": r["accuracy"] / base if base > 0 else None,
    })
  rel = [row["relative_accuracy"] for row in rows]
  auc = normalized_auc(sigmas, rel) if base > 0 else None
  return {"per_sigma": rows, "auc_relative_accuracy": auc}


def evaluated_split(run, split: str, batch_size: int, tool: str):
  """(split, batch size, its labels) a tool evaluating a finished run (config.<tool>) reads: a
  final run's test split by default, a screening run's val (its test stays sealed)."""
  split = sealed_test.split_of_finished_run(run.config, split, tool)
  batch_size = batch_size or run.config.train.eval_batch_size
  parallel.check_batch_size(batch_size, run.mesh, f"config.{tool}.batch_size")
  labels = run.dataset.labels(split)
  if len(labels) == 0:
    raise ValueError(f"split {split!r} of dataset {run.dataset.name!r} is empty")
  return split, batch_size, labels


def study(run, sigmas=DEFAULT_SIGMAS, *, split: str = "", batch_size: int = 0,
          truncate: float = 3.0, boundary: str = "reflect") -> dict:
  """Evaluates `run` (a finished_run.Run) on `split` over the sigma grid; returns blur.json's
  dict."""
  sigmas = check_sigmas(sigmas)
  split, batch_size, labels = evaluated_split(run, split, batch_size, "blur")
  images, labels = pipeline.load_arrays(run.dataset.source(split), range(len(labels)))
  kw = dict(batch_size=batch_size, truncate=truncate, boundary=boundary)
  same = run.input_size == run.native_size
  n = run.native_size
  result = {
      "run": run.workdir,
      "model": run.config.model.name,
      "dataset": run.dataset.name,
      "split": split,
      **sealed_test.read_fields(split == run.config.dataset.test_split),
      "num_examples": int(len(labels)),
      "step": run.step,
      "native_size": n,
      "input_size": run.input_size,
      "sigmas": list(sigmas),
      "sigma_units": f"pixels of the native {n}x{n} patch",
      "truncate": truncate,
      "boundary": boundary,
      "pre_resize": _summarise(
          sigmas, evaluate_grid(run, images, labels, sigmas, "pre_resize", **kw), 1.0, truncate),
  }
  if same:
    result["post_resize"] = f"same as pre_resize: the model's input is {n}x{n}"
  else:
    result["post_resize"] = _summarise(
        sigmas, evaluate_grid(run, images, labels, sigmas, "post_resize", **kw),
        run.input_size / n, truncate)
  return result


def plot(result: dict, path: str):
  """Accuracy vs sigma (pre- and post-resize lines where they differ) as a PNG, atomically."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n, size = result["native_size"], result["input_size"]
  fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
  pre = result["pre_resize"]["per_sigma"]
  if isinstance(result["post_resize"], dict):
    post = result["post_resize"]["per_sigma"]
    ax.plot([r["sigma"] for r in pre], [r["accuracy"] for r in pre], "o-",
            label=f"pre-resize (blur at {n} px)")
    ax.plot([r["sigma"] for r in post], [r["accuracy"] for r in post], "s--",
            label=f"post-resize (blur at {size} px, sigma x {size / n:g})")
  else:
    ax.plot([r["sigma"] for r in pre], [r["accuracy"] for r in pre], "o-",
            label=f"blur at {n} px (input {n}x{n}: pre = post)")
  ax.set_xlabel(f"Gaussian sigma (pixels of the {n}x{n} patch)")
  save_accuracy_plot(fig, ax, result, path, legend_size=8)


def save_accuracy_plot(fig, ax, result: dict, path: str, legend_size: int):
  """The accuracy axis, title and legend of a robustness plot (blur or the suite), then the
  PNG written atomically."""
  import matplotlib.pyplot as plt
  ax.set_ylabel(f"{result['split']} accuracy")
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  ax.set_title(f"{result['model']} on {result['dataset']} ({result['num_examples']} patches)",
               fontsize=9)
  ax.legend(fontsize=legend_size)
  fig.tight_layout()
  try:
    with atomic_files.atomic_path(path) as tmp:
      fig.savefig(tmp, format="png")
  finally:
    plt.close(fig)


def table(result: dict) -> str:
  n = result["native_size"]
  lines = [f"blur robustness of {result['run']} ({result['model']}, input "
           f"{result['input_size']}x{result['input_size']}), {result['split']} split, "
           f"{result['num_examples']} patches; sigma in {n}x{n}-pixel units"]
  for position in POSITIONS:
    block = result[position]
    if not isinstance(block, dict):
      lines.append(f"post_resize: {block}")
      continue
    lines.append(f"{position}:")
    lines.append(f"  {'sigma':>5}  {'accuracy':>8}  {'bal.acc':>8}  "
                 f"{'macro-F1':>8}  {'rel.acc':>7}")
    for r in block["per_sigma"]:
      rel = "n/a" if r["relative_accuracy"] is None else f"{r['relative_accuracy']:.3f}"
      lines.append(f"  {r['sigma']:5.2f}  {r['accuracy']:8.4f}  {r['balanced_accuracy']:8.4f}  "
                   f"{r['macro_f1']:8.4f}  {rel:>7}")
    auc = block["auc_relative_accuracy"]
    lines.append(f"  area under relative accuracy / sigma range: "
                 f"{'n/a' if auc is None else f'{auc:.4f}'} (1.0 = no loss)")
  return "\n".join(lines)


def run_mode(config, workdir: str = ""):
  """mode=blur: config.blur.run names the trained run; writes blur.json and blur.png."""
  b = config.blur
  if not b.run:
    raise ValueError("config.blur.run is empty; pass the trained run's workdir, e.g. "
                     "--config.blur.run=runs/customvit")
  sigmas = check_sigmas(b.sigmas)  # before anything is loaded
  run = finished_run.load_run(b.run, data_dir=b.data_dir or None)
  result = study(run, sigmas, split=b.split, batch_size=b.batch_size, truncate=b.truncate,
                 boundary=b.boundary)
  result["config"] = config.to_dict()
  workdir = os.path.abspath(workdir or os.path.join(run.workdir, "blur"))
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    result["plot"] = "blur.png"
    atomic_files.write_json(workdir, "blur.json", result)
    plot(result, os.path.join(workdir, "blur.png"))
    print("\n" + table(result))
    print(f"wrote {os.path.join(workdir, 'blur.json')} and blur.png")
  return result
