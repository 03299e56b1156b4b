"""The study's figures (matplotlib, Agg): data-scale curves, blur curves, accuracy vs cost.

Each function takes the aggregates of study_results.py and writes one PNG atomically.
"""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from cellvit_jax import atomic_files  # noqa: E402
from cellvit_jax.experiments import study_results  # noqa: E402

LABELS = {"accuracy": "test accuracy", "macro_f1": "test macro-F1",
          "balanced_accuracy": "test balanced accuracy"}


def _save(fig, path):
  fig.tight_layout()
  try:
    with atomic_files.atomic_path(path) as tmp:
      fig.savefig(tmp, format="png")
  finally:
    plt.close(fig)
  return path


def data_scale(aggregates, rows, path, metrics=("accuracy", "macro_f1")):
  """Metric vs FlagLimit (log2 axis), mean +- std over seeds, one line per row."""
  fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4), dpi=110)
  axes = list(axes) if len(metrics) > 1 else [axes]
  for ax, metric in zip(axes, metrics):
    for row in rows:
      pts = [a for a in aggregates if a["row"] == row]
      ax.errorbar([a["flaglimit"] for a in pts], [a[f"{metric}_mean"] for a in pts],
                  yerr=[a[f"{metric}_std"] for a in pts], marker="o", capsize=3, label=row)
    ax.set_xscale("log", base=2)
    ticks = sorted({a["flaglimit"] for a in aggregates})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("FlagLimit (training samples per class, log2)")
    ax.set_ylabel(f"{LABELS[metric]} (mean +- std over seeds)")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  return _save(fig, path)


def blur(records, rows, flaglimit, position, path):
  """Accuracy vs Gaussian sigma (40x40-pixel units) per row at one FlagLimit."""
  fig, ax = plt.subplots(figsize=(5.5, 4), dpi=110)
  for row in rows:
    c = study_results.blur_curves(records, row, flaglimit, position)
    same = c["same_as_pre"] and position == "post_resize"
    label = row + (" (input 40x40: = pre)" if same else "")
    ax.errorbar(c["sigmas"], c["mean"], yerr=c["std"], marker="o", capsize=3, label=label)
  where = "before the resize" if position == "pre_resize" else "after the resize (sigma scaled)"
  ax.set_title(f"blur {where}, FlagLimit {flaglimit}", fontsize=9)
  ax.set_xlabel("Gaussian sigma (pixels of the 40x40 patch)")
  ax.set_ylabel("test accuracy (mean over seeds)")
  ax.set_ylim(0, 1.02)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, path)


def accuracy_vs_cost(points, path, title=""):
  """points: [{row, accuracy, accuracy_std, gflops, images_per_sec}] -> two log-x panels."""
  fig, axes = plt.subplots(1, 2, figsize=(10.5, 4), dpi=110)
  if title:
    fig.suptitle(title, fontsize=9)
  for ax, key, label in ((axes[0], "gflops", "GFLOPs per image (log)"),
                         (axes[1], "images_per_sec",
                          f"images/s at batch {points[0]['batch'] if points else '?'} (log)")):
    for p in points:
      if p[key] is None or not math.isfinite(p[key]) or p[key] <= 0:
        continue
      ax.errorbar([p[key]], [p["accuracy"]], yerr=[p["accuracy_std"]], marker="o", capsize=3,
                  label=p["row"])
      ax.annotate(p["row"], (p[key], p["accuracy"]), fontsize=7, xytext=(4, 4),
                  textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3, which="both")
  return _save(fig, path)
