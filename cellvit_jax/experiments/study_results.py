"""Reading a study directory back: one record per finished cell, cost rows, aggregates.

The store is plain files (modes/study.py writes them), so studies run on several
machines merge by copying their `runs/` and `cost/` folders into one directory.  Only
cells with `cell.json` (finished training and blur study) count; a cell still running on
another host is simply not there yet.
"""
import json
import math
import os

import numpy as np

METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
POSITIONS = ("pre_resize", "post_resize")


def _load(path):
  with open(path) as f:
    return json.load(f)


def load_cells(study_dir: str) -> list[dict]:
  """[{row, model, flaglimit, seed, accuracy, ..., blur: {position: {sigmas, accuracy, auc}}}]."""
  runs = os.path.join(study_dir, "runs")
  if not os.path.isdir(runs):
    raise ValueError(f"--study_dir {study_dir!r} holds no runs/ folder; run the study first: "
                     f"python -m cellvit_jax.main --config=configs/study.py --workdir={study_dir}")
  records = []
  for row in sorted(os.listdir(runs)):
    for fl_dir in sorted(os.listdir(os.path.join(runs, row))):
      for seed_dir in sorted(os.listdir(os.path.join(runs, row, fl_dir))):
        cell_dir = os.path.join(runs, row, fl_dir, seed_dir)
        if not os.path.isfile(os.path.join(cell_dir, "cell.json")):
          continue
        cell = _load(os.path.join(cell_dir, "cell.json"))
        results = _load(os.path.join(cell_dir, cell["results"]))
        if "test" not in results:
          raise ValueError(
              f"{cell_dir} is a screening cell (config.evaluate_test=False: its test split was "
              "never read), and the report tabulates test metrics. Compare screening cells on "
              "val: python -m cellvit_jax.experiments.results_table --mean "
              f"{os.path.join(runs, '*', '*', '*', 'results.json')}; the final study "
              "(config.study.screening=False) reads test and reports it")
        blur = _load(os.path.join(cell_dir, cell["blur"]))
        record = {"row": cell["row"], "mode": cell["mode"], "model": results["model"],
                  "flaglimit": int(results["flaglimit"]), "seed": int(results["seed"]),
                  "dataset": results["dataset"], "train_examples": results.get("train_examples"),
                  "num_params": results.get("num_params"),
                  "dir": os.path.relpath(cell_dir, study_dir),
                  **{m: float(results["test"][m]) for m in METRICS}, "blur": {}}
        for position in POSITIONS:
          block = blur[position] if isinstance(blur[position], dict) else blur["pre_resize"]
          record["blur"][position] = {
              "sigmas": [r["sigma"] for r in block["per_sigma"]],
              "accuracy": [r["accuracy"] for r in block["per_sigma"]],
              "auc": block["auc_relative_accuracy"],
              "same_as_pre": not isinstance(blur[position], dict)}
        # Optional: mode=robustness's output in the cell's default place (None when absent).
        suite = os.path.join(cell_dir, "robustness", "robustness.json")
        record["robustness"] = _load(suite) if os.path.isfile(suite) else None
        records.append(record)
  if not records:
    raise ValueError(f"--study_dir {study_dir!r} has no finished cell yet "
                     "(no runs/*/*/*/cell.json); let the study finish at least one cell")
  return records


def load_costs(study_dir: str) -> dict:
  """{row: cost row} from cost/<row>.json."""
  folder = os.path.join(study_dir, "cost")
  if not os.path.isdir(folder):
    return {}
  return {name[:-5]: _load(os.path.join(folder, name)) for name in sorted(os.listdir(folder))
          if name.endswith(".json")}


def row_order(study_dir: str, records) -> list[str]:
  """Rows in the study's order (study.json: by name), rows found only on disk after them."""
  path = os.path.join(study_dir, "study.json")
  order = [r["row"] for r in _load(path)["rows"]] if os.path.isfile(path) else []
  present = {r["row"] for r in records}
  return [r for r in order if r in present] + sorted(present - set(order))


def mean_std(values) -> tuple:
  """(mean, sample std with ddof=1; 0 for one value, nan for none)."""
  v = np.asarray(values, np.float64)
  if v.size == 0:
    return math.nan, math.nan
  return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def aggregate(records) -> list[dict]:
  """One entry per (row, FlagLimit): n seeds and mean/std of every metric."""
  groups = {}
  for r in records:
    groups.setdefault((r["row"], r["flaglimit"]), []).append(r)
  out = []
  for (row, fl), group in sorted(groups.items()):
    entry = {"row": row, "flaglimit": fl, "seeds": len(group),
             "seed_list": sorted(r["seed"] for r in group)}
    for m in METRICS:
      entry[f"{m}_mean"], entry[f"{m}_std"] = mean_std([r[m] for r in group])
    out.append(entry)
  return out


def blur_curves(records, row, flaglimit, position) -> dict:
  """Mean (and std) accuracy over seeds per sigma for one row at one FlagLimit."""
  group = [r for r in records if r["row"] == row and r["flaglimit"] == flaglimit]
  sigmas = group[0]["blur"][position]["sigmas"]
  acc = np.asarray([r["blur"][position]["accuracy"] for r in group], np.float64)
  aucs = [r["blur"][position]["auc"] for r in group if r["blur"][position]["auc"] is not None]
  return {"sigmas": sigmas, "mean": acc.mean(0).tolist(),
          "std": (acc.std(0, ddof=1) if len(group) > 1 else np.zeros(len(sigmas))).tolist(),
          "auc_mean": mean_std(aucs)[0], "auc_std": mean_std(aucs)[1], "seeds": len(group),
          "same_as_pre": group[0]["blur"][position]["same_as_pre"]}


def flaglimits(records) -> list[int]:
  return sorted({r["flaglimit"] for r in records})


def largest_common_flaglimit(records, rows) -> int:
  """The largest FlagLimit every row has finished (the comparison point for blur and cost)."""
  common = set(flaglimits(records))
  for row in rows:
    common &= {r["flaglimit"] for r in records if r["row"] == row}
  return max(common) if common else max(flaglimits(records))
