"""The study report: Markdown tables, CSVs and figures from a study directory's files.

    python -m cellvit_jax.experiments.report --study_dir=study [--output_dir=study/report]

Writes into output_dir (default <study_dir>/report/):
  report.md              every table below, the figures, and where each number came from
  cells.csv              one line per finished cell (row, FlagLimit, seed, test metrics)
  accuracy.csv           per row and FlagLimit: seeds, mean and std of accuracy, balanced
                         accuracy and macro-F1
  blur.csv               per cell, placement and sigma: test accuracy
  cost.csv               per row: parameters, input size, GFLOPs/image, images/s per batch
  accuracy_vs_cost.csv   per row at the comparison FlagLimit: accuracy and cost
  data_scale.png         accuracy and macro-F1 vs FlagLimit (log2 axis)
  blur_pre_resize.png, blur_post_resize.png   accuracy vs sigma at the comparison FlagLimit
  accuracy_vs_cost.png   accuracy vs GFLOPs and vs images/s (log axes)
  robustness.csv         only when some cell has robustness/robustness.json (mode=robustness,
                         or study.robustness.enabled): per cell, perturbation and severity

Every number is read from the store; std is the sample std (ddof=1) over seeds.
"""
import csv
import os

from cellvit_jax import atomic_files
from cellvit_jax.experiments import report_plots, study_results

METRIC_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1",
                "balanced_accuracy": "balanced accuracy"}


def _fmt(mean, std, seeds):
  return f"{mean:.4f} +- {std:.4f}" if seeds > 1 else f"{mean:.4f}"


def _write_csv(path, header, rows):
  import io
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(header)
  w.writerows(rows)
  atomic_files.write_text(path, buf.getvalue())


def metric_table(aggregates, rows, fls, metric) -> str:
  """Markdown: rows x FlagLimits, mean +- std (n seeds in brackets when they differ)."""
  head = ["model"] + [f"FL {fl}" for fl in fls]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  by = {(a["row"], a["flaglimit"]): a for a in aggregates}
  for row in rows:
    cells = [row]
    for fl in fls:
      a = by.get((row, fl))
      cells.append("" if a is None else _fmt(a[f"{metric}_mean"], a[f"{metric}_std"], a["seeds"]))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def cost_points(aggregates, costs, rows, flaglimit) -> list[dict]:
  by = {(a["row"], a["flaglimit"]): a for a in aggregates}
  points = []
  for row in rows:
    a, c = by.get((row, flaglimit)), costs.get(row)
    if a is None or c is None:
      continue
    largest = max(c["images_per_sec"], key=int)
    points.append({"row": row, "accuracy": a["accuracy_mean"], "accuracy_std": a["accuracy_std"],
                   "seeds": a["seeds"], "gflops": c["gflops_per_image"],
                   "images_per_sec": c["images_per_sec"][largest], "batch": int(largest),
                   "params": c["params"], "input_size": c["input_size"]})
  return points


def cost_table(costs, rows) -> str:
  sizes = sorted({b for r in rows if r in costs for b in costs[r]["images_per_sec"]}, key=int)
  head = ["model", "parameters", "input", "GFLOPs/image"] + [f"images/s @{b}" for b in sizes]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    if row not in costs:
      continue
    c = costs[row]
    cells = [row, f"{c['params']:,}", f"{c['input_size']}x{c['input_size']}",
             f"{c['gflops_per_image']:.4g}"]
    cells += [f"{c['images_per_sec'][b]:.0f}" if b in c["images_per_sec"] else "" for b in sizes]
    lines.append("| " + " | ".join(cells) + " |")
  devices = sorted({costs[r]["device"] for r in rows if r in costs})
  return "\n".join(lines) + f"\n\nMeasured on: {', '.join(devices) or 'n/a'}."


def robustness_section(suites, rows, flaglimit) -> list:
  """Markdown: per row, test accuracy at the strongest severity of each perturbation (mean
  over seeds at `flaglimit`), with the clean accuracy of the same patches."""
  names = []
  for r in suites:
    names += [n for n in r["robustness"]["perturbations"] if n not in names]
  md = [f"## Robustness beyond blur (FlagLimit {flaglimit})", "",
        "Test accuracy (mean over seeds) on the suite's patches unperturbed and at each "
        "perturbation's strongest severity (mode=robustness; every severity: "
        "`robustness.csv`).", "",
        "| model | clean | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
  for row in rows:
    group = [r["robustness"] for r in suites if r["row"] == row and r["flaglimit"] == flaglimit]
    if not group:
      continue
    cells = [f"{sum(g['clean']['accuracy'] for g in group) / len(group):.4f}"]
    for name in names:
      last = [g["perturbations"][name]["rows"][-1] for g in group if name in g["perturbations"]]
      cells.append(f"{sum(x['accuracy'] for x in last) / len(last):.4f} "
                   f"({last[0]['severity']:g})" if last else "")
    md.append(f"| {row} | " + " | ".join(cells) + " |")
  return md + [""]


def write_report(study_dir: str, output_dir: str = "") -> dict:
  """Reads the store, writes every file listed in the module docstring; returns their paths."""
  given = study_dir
  study_dir = os.path.abspath(study_dir)
  output_dir = os.path.abspath(output_dir or os.path.join(study_dir, "report"))
  records = study_results.load_cells(study_dir)
  costs = study_results.load_costs(study_dir)
  rows = study_results.row_order(study_dir, records)
  fls = study_results.flaglimits(records)
  aggregates = study_results.aggregate(records)
  compare_fl = study_results.largest_common_flaglimit(records, rows)
  os.makedirs(output_dir, exist_ok=True)
  out = {}

  def path(name):
    out[name] = os.path.join(output_dir, name)
    return out[name]

  metrics = study_results.METRICS
  _write_csv(path("cells.csv"), ["row", "model", "mode", "flaglimit", "seed", "train_examples",
                                 "num_params", *metrics, "dir"],
             [[r["row"], r["model"], r["mode"], r["flaglimit"], r["seed"], r["train_examples"],
               r["num_params"], *[r[m] for m in metrics], r["dir"]] for r in records])
  _write_csv(path("accuracy.csv"),
             ["row", "flaglimit", "seeds"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")],
             [[a["row"], a["flaglimit"], a["seeds"]] + [a[f"{m}_{s}"] for m in metrics
                                                         for s in ("mean", "std")]
              for a in aggregates])
  _write_csv(path("blur.csv"), ["row", "flaglimit", "seed", "position", "sigma", "accuracy"],
             [[r["row"], r["flaglimit"], r["seed"], pos, s, acc] for r in records
              for pos in study_results.POSITIONS
              for s, acc in zip(r["blur"][pos]["sigmas"], r["blur"][pos]["accuracy"])])
  sizes = sorted({b for c in costs.values() for b in c["images_per_sec"]}, key=int)
  _write_csv(path("cost.csv"), ["row", "model", "params", "input_size", "dtype", "gflops_per_image",
                                *[f"images_per_sec_{b}" for b in sizes], "device"],
             [[row, c["model"], c["params"], c["input_size"], c["dtype"], c["gflops_per_image"],
               *[c["images_per_sec"].get(b, "") for b in sizes], c["device"]]
              for row, c in ((r, costs[r]) for r in rows if r in costs)])
  points = cost_points(aggregates, costs, rows, compare_fl)
  _write_csv(path("accuracy_vs_cost.csv"),
             ["row", "flaglimit", "seeds", "accuracy_mean", "accuracy_std", "gflops_per_image",
              "images_per_sec", "batch"],
             [[p["row"], compare_fl, p["seeds"], p["accuracy"], p["accuracy_std"], p["gflops"],
               p["images_per_sec"], p["batch"]] for p in points])

  report_plots.data_scale(aggregates, rows, path("data_scale.png"))
  for pos in study_results.POSITIONS:
    report_plots.blur(records, rows, compare_fl, pos, path(f"blur_{pos}.png"))
  if points:
    report_plots.accuracy_vs_cost(
        points, path("accuracy_vs_cost.png"),
        f"test accuracy (mean over seeds) at FlagLimit {compare_fl} vs inference cost on "
        f"{', '.join(sorted({costs[p['row']]['device'] for p in points}))}")

  seeds = sorted({r["seed"] for r in records})
  datasets = sorted({r["dataset"] for r in records})
  md = [f"# Study report: {os.path.basename(study_dir)}", "",
        f"Generated by `python -m cellvit_jax.experiments.report --study_dir={given}` from "
        f"{len(records)} finished cell(s): dataset {', '.join(datasets)}, "
        f"{len(rows)} model row(s), FlagLimits {', '.join(map(str, fls))}, seeds "
        f"{', '.join(map(str, seeds))}. Mean +- sample std over seeds (no +- when one seed); "
        "test split. Per-cell numbers: `cells.csv`.", ""]
  for metric in ("accuracy", "macro_f1"):
    md += [f"## Test {METRIC_NAMES[metric]} per model and FlagLimit", "",
           metric_table(aggregates, rows, fls, metric), ""]
  md += ["## Data-scale curves", "", "![data-scale curves](data_scale.png)", "",
         f"## Blur robustness (FlagLimit {compare_fl})", "",
         "Normalised area under relative accuracy vs sigma (1.0 = no loss); sigma in pixels of "
         "the 40x40 patch. Pre-resize: blur the native patch; post-resize: blur after resizing "
         "to the model's input (the same for 40x40-input models).", "",
         "| model | pre-resize AUC | post-resize AUC |", "|---|---|---|"]
  for row in rows:
    c = {pos: study_results.blur_curves(records, row, compare_fl, pos)
         for pos in study_results.POSITIONS}
    md.append(f"| {row} | " + " | ".join(_fmt(c[p]["auc_mean"], c[p]["auc_std"], c[p]["seeds"])
                                          for p in study_results.POSITIONS) + " |")
  md += ["", "![blur pre-resize](blur_pre_resize.png) ![blur post-resize](blur_post_resize.png)",
         "", "## Inference cost", "",
         "Parameters, XLA GFLOPs per image at the model's input size (the 40x40 patch resized "
         "where the model needs it) and images/s of the compiled inference function, measured "
         "once per model by the study on the device it ran on.", "", cost_table(costs, rows), ""]
  if points:
    md += [f"## Accuracy vs inference cost (FlagLimit {compare_fl})", "",
           "| model | accuracy | GFLOPs/image | images/s |", "|---|---|---|---|"]
    md += [f"| {p['row']} | {_fmt(p['accuracy'], p['accuracy_std'], p['seeds'])} | "
           f"{p['gflops']:.4g} | {p['images_per_sec']:.0f} (batch {p['batch']}) |" for p in points]
    md += ["", "![accuracy vs cost](accuracy_vs_cost.png)", ""]
  suites = [r for r in records if r.get("robustness")]
  if suites:
    _write_csv(path("robustness.csv"),
               ["row", "flaglimit", "seed", "perturbation", "level", "severity", "accuracy",
                "balanced_accuracy", "macro_f1"],
               [[r["row"], r["flaglimit"], r["seed"], name, row["level"], row["severity"],
                 row["accuracy"], row["balanced_accuracy"], row["macro_f1"]]
                for r in suites for name, block in r["robustness"]["perturbations"].items()
                for row in block["rows"]])
    md += robustness_section(suites, rows, compare_fl)
  md += ["## Files", "", "`cells.csv`, `accuracy.csv`, `blur.csv`, `cost.csv`, "
         "`accuracy_vs_cost.csv`" + (", `robustness.csv`" if suites else "")
         + ": the tables above as CSV.", ""]
  atomic_files.write_text(path("report.md"), "\n".join(md))
  return out


def main(argv):
  from absl import flags
  del argv
  f = flags.FLAGS
  try:
    out = write_report(f.study_dir, f.output_dir)
  except (ValueError, OSError) as e:
    raise SystemExit(f"error: {' '.join(str(e).split())}") from None
  print(f"wrote {out['report.md']} and {len(out) - 1} more file(s) "
        f"in {os.path.dirname(out['report.md'])}")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("study_dir", "study", "The study directory (--workdir of mode=study).")
  flags.DEFINE_string("output_dir", "", "Where to write; default <study_dir>/report.")
  app.run(main)
