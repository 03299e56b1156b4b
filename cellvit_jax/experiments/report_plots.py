"""The study's figures (matplotlib, Agg): data-scale curves, blur curves, accuracy vs cost.

Each function takes the aggregates of study_results.py and writes one PNG atomically.
"""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from cellvit_jax import atomic_files  # noqa: E402
from cellvit_jax.experiments import study_results  # noqa: E402

LABELS = {"accuracy": "test accuracy", "macro_f1": "test macro-F1",
          "balanced_accuracy": "test balanced accuracy"}

# More labels than this crowd a 4-5 inch panel axis.
MAX_LABELS = 6
# Tick mantissas on log axes, densest first: the densest set that fits MAX_LABELS wins.
_MANTISSAS = ((1, 1.25, 1.5, 2, 2.5, 3, 4, 5, 6, 8), (1, 1.5, 2, 3, 5, 7), (1, 2, 3, 5),
              (1, 2, 5), (1, 3), (1,))


def plain_number(x):
  """Tick text without exponents where it stays short: 0.04, 1.25, 1500; 1e+08 beyond."""
  if x == 0:
    return "0"
  if not 1e-6 <= abs(x) < 1e7:
    return f"{x:g}"
  for decimals in range(12):
    text = f"{x:.{decimals}f}"
    if abs(float(text) - x) <= 1e-6 * abs(x):
      return text
  return f"{x:g}"


class ReadableLogLocator(ticker.LogLocator):
  """Base-10 log ticks, at most MAX_LABELS in view, 2 or more whenever the data allow.

  Matplotlib's own log ticks give one label per decade plus, on a view narrower than a
  decade, a mathtext label on every minor tick, which overlap into a strip.
  """

  def __init__(self, max_ticks=MAX_LABELS):
    super().__init__(base=10.0)
    self.max_ticks = max_ticks

  def tick_values(self, vmin, vmax):
    if vmax < vmin:
      vmin, vmax = vmax, vmin
    if not (vmin > 0 and math.isfinite(vmin) and math.isfinite(vmax)):
      return super().tick_values(vmin, vmax)
    lo, hi = math.log10(vmin), math.log10(vmax)
    decades = range(math.floor(lo), math.ceil(hi) + 1)
    for subs in _MANTISSAS:
      ticks = [m * 10.0 ** e for e in decades for m in subs]
      ticks = [t for t in ticks if vmin <= t <= vmax]
      if len(ticks) <= self.max_ticks:
        break
    if len(ticks) > self.max_ticks:   # many decades: every stride-th power of ten
      stride = math.ceil(len(ticks) / self.max_ticks)
      ticks = ticks[::stride]
    if len(ticks) < 2:   # narrower than the gap between two mantissas: linear steps
      ticks = [t for t in ticker.MaxNLocator(nbins=4).tick_values(vmin, vmax)
               if vmin <= t <= vmax] or ticks
    return ticks


def readable_log_x(ax):
  """Log-x axis labelled with plain numbers, at most MAX_LABELS labels; minor ticks unlabelled."""
  ax.set_xscale("log")
  ax.xaxis.set_major_locator(ReadableLogLocator())
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: plain_number(x)))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def few_linear_ticks(axis):
  """At most MAX_LABELS labelled ticks on a linear axis (matplotlib's default allows up to 11)."""
  axis.set_major_locator(ticker.MaxNLocator(nbins=MAX_LABELS - 1))


def thinned_labels(ticks, max_labels=MAX_LABELS):
  """Every k-th tick's text (first one included) so that at most max_labels are non-empty."""
  stride = max(1, math.ceil(len(ticks) / max_labels))
  return [str(t) if i % stride == 0 else "" for i, t in enumerate(ticks)]


def _save(fig, path):
  try:
    with atomic_files.atomic_path(path) as tmp:
      fig.savefig(tmp, format="png")
  finally:
    plt.close(fig)
  return path


def data_scale(aggregates, rows, path, metrics=("accuracy", "macro_f1")):
  """Metric vs FlagLimit (log2 axis), mean +- std over seeds, one line per row."""
  return _save(data_scale_figure(aggregates, rows, metrics), path)


def data_scale_figure(aggregates, rows, metrics=("accuracy", "macro_f1")):
  """The figure data_scale saves, laid out; the caller closes it."""
  fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4), dpi=110)
  axes = list(axes) if len(metrics) > 1 else [axes]
  for ax, metric in zip(axes, metrics):
    for row in rows:
      pts = [a for a in aggregates if a["row"] == row]
      ax.errorbar([a["flaglimit"] for a in pts], [a[f"{metric}_mean"] for a in pts],
                  yerr=[a[f"{metric}_std"] for a in pts], marker="o", capsize=3, label=row)
    ax.set_xscale("log", base=2)
    ticks = sorted({a["flaglimit"] for a in aggregates})
    ax.set_xticks(ticks, thinned_labels(ticks))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xlabel("FlagLimit (training samples per class, log2)")
    ax.set_ylabel(f"{LABELS[metric]} (mean +- std over seeds)")
    few_linear_ticks(ax.yaxis)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  return fig


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
  few_linear_ticks(ax.xaxis)
  few_linear_ticks(ax.yaxis)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return _save(fig, path)


def accuracy_vs_cost(points, path, title=""):
  """points: [{row, accuracy, accuracy_std, gflops, images_per_sec}] -> two log-x panels."""
  return _save(accuracy_vs_cost_figure(points, title), path)


def accuracy_vs_cost_figure(points, title=""):
  """The figure accuracy_vs_cost saves, laid out; the caller closes it."""
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
    readable_log_x(ax)
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy")
    few_linear_ticks(ax.yaxis)
    ax.grid(alpha=0.3, which="both")
  fig.tight_layout()
  return fig
