"""Markdown table of finished runs: one row per results.json (or per line of a .jsonl of them).

    python -m cellvit_jax.experiments.results_table runs/*/results.json
    python -m cellvit_jax.experiments.results_table docs/results/models_fl1024_h100.jsonl

    python -m cellvit_jax.experiments.results_table --mean docs/results/customvit_design.jsonl

Rows are sorted by test accuracy, best first. Numbers are read from the files, never typed.
A record needs model, flaglimit, num_params and test{accuracy, balanced_accuracy, macro_f1};
an optional `tag` names a variant of a model (an ablation).

`--only=NAME,NAME` keeps the records whose variant (tag, else model) is one of the names,
e.g. to set CustomViT's rows beside the CNN rows of another file:

    python -m cellvit_jax.experiments.results_table --mean --only=resnet18,customvit_hybrid \
        docs/results/models_fl1024_h100.jsonl docs/results/customvit_fl1024_cpu.jsonl

`--mean` groups records by (tag, recipe, FlagLimit) and gives mean +- sample std over seeds
of val and test accuracy, with GFLOPs per image and the host; rows are sorted by val (the
split choices are made on). Records without test metrics (screening rows of export_rows)
show "-" there.

`--cost=COST.json` (the rows `python -m cellvit_jax.experiments.cost --output=COST.json`
writes) completes the cost columns: a record without its own GFLOPs takes them from the cost
row of the same model *and* parameter count (so a variant of another size is never given a
stranger's figure); it adds that row's inference images/s at its largest batch, a
measurement of the machine that ran `cost` (the table says which), and marks the rows on the
accuracy-vs-cost frontier: no other row reaches at least their mean test accuracy for at
most their GFLOPs. Needs `--mean`.

A metric's 95% bootstrap interval (`accuracy_ci95` etc. in the record's test / val, which runs
write since bootstrap.py) is shown beside it, `0.9120 [0.9050, 0.9190]`; with `--mean`, for
a group of one seed (an interval is of one run's test set, not over seeds).

`--paired=A,B` compares two finished runs on one test set: each metric of A and B, A - B
and its 95% paired-bootstrap interval (the same 1000 resamples applied to both). A and B are
run folders (or their test_predictions.npz); no other argument is needed:

    python -m cellvit_jax.experiments.results_table --paired=runs/customvit,runs/resnet18
"""
import json
import statistics
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from cellvit_jax import bootstrap
from cellvit_jax.runs import test_predictions

REQUIRED = ("model", "flaglimit", "num_params", "test")
REQUIRED_MEAN = ("model", "flaglimit", "num_params", "val")


def variant(record: dict) -> str:
  """A record's row name: its tag (an ablation), else its model."""
  return record.get("tag") or record["model"]


def read_records(paths: Sequence[str], required: Sequence[str] = REQUIRED) -> List[dict]:
  records = []
  for path in paths:
    with open(path) as f:
      text = f.read()
    try:
      docs = [json.loads(text)] if not path.endswith(".jsonl") else [
          json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not JSON ({e}); pass results.json files or .jsonl files of them")
    for doc in docs:
      missing = [k for k in required if k not in doc]
      if missing == ["test"] and doc.get("test_read") is False:
        raise ValueError(f"{path}: a screening run (config.evaluate_test=False: its test split "
                         "was never read) has no test metrics to tabulate; pass --mean to "
                         "compare runs on val")
      if missing:
        raise ValueError(f"{path}: a record lacks {missing}; is it a finished run's results.json?")
      records.append(doc)
  return records


def markdown(records: Sequence[dict]) -> str:
  head = ["model", "FlagLimit", "parameters", "test accuracy", "balanced acc.", "macro-F1",
          "train images/s", "steps", "device"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in sorted(records, key=lambda r: -r["test"]["accuracy"]):
    ips = r.get("train_images_per_sec")
    lines.append("| " + " | ".join([
        variant(r), str(r["flaglimit"]), f"{r['num_params'] / 1e6:.2f} M",
        _with_ci(r["test"], "accuracy"), _with_ci(r["test"], "balanced_accuracy"),
        _with_ci(r["test"], "macro_f1"), f"{ips:.0f}" if ips else "n/a", str(r.get("steps", "")),
        r.get("platform", "")]) + " |")
  return "\n".join(lines) + "\n"


def _with_ci(split: dict, metric: str) -> str:
  """`0.9120`, or `0.9120 [0.9050, 0.9190]` where the split holds the metric's interval."""
  ci = split.get(f"{metric}_ci95")
  return f"{split[metric]:.4f}" + (f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else "")


def _mean_std(values: Sequence[float], single: Optional[dict] = None) -> str:
  """mean +- std over seeds; one value alone, with its interval from `single` (that seed's
  split dict) where it has one."""
  if not values:
    return "-"
  if len(values) == 1:
    return _with_ci(single, "accuracy") if single else f"{values[0]:.4f}"
  return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def select(records: Sequence[dict], names: Sequence[str]) -> List[dict]:
  """The records whose variant (tag, else model) is in `names`; a name that matches none is
  an error (a typo would otherwise drop a row from the table silently)."""
  unknown = sorted(set(names) - {variant(r) for r in records})
  if unknown:
    raise ValueError(f"--only names {unknown} match no record; the files hold "
                     f"{sorted({variant(r) for r in records})}")
  return [r for r in records if variant(r) in names]


def read_cost(path: str) -> Dict[Tuple[str, int], dict]:
  """Cost rows (experiments/cost --output) keyed by (model, parameter count)."""
  with open(path) as f:
    try:
      rows = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"--cost={path} is not JSON ({e}); pass the file that "
                       "python -m cellvit_jax.experiments.cost --output=FILE wrote")
  if not isinstance(rows, list) or not all(
      isinstance(r, dict) and {"model", "params", "gflops_per_image"} <= set(r) for r in rows):
    raise ValueError(f"--cost={path} is not a list of cost rows (model, params, "
                     "gflops_per_image, ...); pass what experiments.cost --output wrote")
  return {(r["model"], int(r["params"])): r for r in rows}


def _fastest(cost_row: dict) -> str:
  speeds = cost_row.get("images_per_sec") or {}
  if not speeds:
    return "n/a"
  batch = max(speeds, key=int)
  return f"{speeds[batch]:.0f} @{batch}"


def frontier(points: Sequence[Tuple[Optional[float], Optional[float]]]) -> List[Optional[bool]]:
  """For (accuracy, GFLOPs) pairs: is each on the accuracy-vs-cost frontier, i.e. no other
  point is at least as accurate for at most its GFLOPs and better in one of the two? None
  where a pair lacks either number."""
  known = [(a, g) for a, g in points if a is not None and g is not None]
  return [None if a is None or g is None else not any(
      a2 >= a and g2 <= g and (a2 > a or g2 < g) for a2, g2 in known) for a, g in points]


def mean_markdown(records: Sequence[dict], cost: Optional[dict] = None) -> str:
  """One row per (tag, recipe, FlagLimit): accuracy mean +- std over its seeds; with `cost`
  (read_cost), missing GFLOPs filled in, a column of inference images/s and one marking the
  rows on the test-accuracy-vs-GFLOPs frontier."""
  groups = {}
  for r in records:
    key = (variant(r), r.get("recipe", ""), r["flaglimit"])
    groups.setdefault(key, []).append(r)
  head = ["variant", "recipe", "FlagLimit", "seeds", "parameters", "GFLOPs/image",
          "val accuracy", "test accuracy", "host"]
  if cost is not None:
    devices = sorted({str(r.get("host") or r.get("device", "?")) for r in cost.values()})
    head.insert(6, f"inference images/s ({', '.join(devices)})")
    head.append("on the frontier")
  rows, points = [], []
  for (tag, recipe, flaglimit), rs in groups.items():
    seeds = sorted({r["seed"] for r in rs})
    if len(seeds) != len(rs):
      raise ValueError(f"{tag} ({recipe}, FlagLimit {flaglimit}) has two records of one seed; "
                       "remove the duplicate line")
    val = [r["val"]["accuracy"] for r in rs]
    test = [r["test"]["accuracy"] for r in rs if "test" in r]
    gflops = rs[0].get("gflops_per_image")
    cost_row = (cost or {}).get((rs[0]["model"], int(rs[0]["num_params"])))
    if not gflops and cost_row:
      gflops = cost_row["gflops_per_image"]
    cells = [
        tag, recipe or "-", str(flaglimit), ",".join(map(str, seeds)),
        f"{rs[0]['num_params'] / 1e6:.2f} M", f"{gflops:.3f}" if gflops else "n/a",
        _mean_std(val, rs[0]["val"]),
        _mean_std(test, rs[0].get("test")) if len(test) == len(rs) else "-",
        "; ".join(sorted({r.get("host") or r.get("platform", "?") for r in rs}))]
    if cost is not None:
      cells.insert(6, _fastest(cost_row) if cost_row else "n/a")
    rows.append((statistics.mean(val), cells))
    points.append((statistics.mean(test) if test and len(test) == len(rs) else None, gflops))
  if cost is not None:
    for (_, cells), on in zip(rows, frontier(points)):
      cells.append({None: "-", True: "yes", False: ""}[on])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(cells) + " |" for _, cells in sorted(rows, key=lambda t: -t[0])]
  return "\n".join(lines) + "\n"


def paired_markdown(run_a: str, run_b: str) -> str:
  """A - B on each metric with its 95% paired-bootstrap interval (bootstrap.paired) from the
  two runs' stored test predictions (runs/test_predictions.py)."""
  a, b = test_predictions.load(run_a), test_predictions.load(run_b)
  test_predictions.check_same_test_set(a, b)
  result = bootstrap.paired(a["labels"], a["predictions"], b["predictions"],
                            len(a["class_names"]))
  lines = [f"A = {run_a}, B = {run_b}: {a['dataset']} {a['split']}, {len(a['labels'])} "
           f"examples; {bootstrap.RESAMPLES} paired resamples (seed {bootstrap.SEED})", "",
           "| metric | A | B | A - B | 95% interval |", "|---|---|---|---|---|"]
  for metric, r in result.items():
    lines.append(f"| {metric} | {r['a']:.4f} | {r['b']:.4f} | {r['difference']:+.4f} | "
                 f"[{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}] |")
  return "\n".join(lines) + "\n\n"  # a blank line ends the table before any next one


def main(argv):
  paired = [a.split("=", 1)[1] for a in argv if a.startswith("--paired=")]
  if paired:
    runs = paired[0].split(",")
    if len(paired) > 1 or len(runs) != 2 or not all(runs) or len(argv) > 1:
      print("usage: python -m cellvit_jax.experiments.results_table --paired=RUN_A,RUN_B "
            "(two run folders or test_predictions.npz files, nothing else)", file=sys.stderr)
      return 2
    try:
      print(paired_markdown(*runs), end="")
    except (OSError, ValueError) as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    return 0
  mean = "--mean" in argv
  only = [a.split("=", 1)[1] for a in argv if a.startswith("--only=")]
  costs = [a.split("=", 1)[1] for a in argv if a.startswith("--cost=")]
  argv = [a for a in argv if a != "--mean" and not a.startswith(("--only=", "--cost="))]
  if not argv or len(costs) > 1 or (costs and not mean):
    print("usage: python -m cellvit_jax.experiments.results_table [--mean [--cost=COST.json]] "
          "[--only=NAME,...] RESULTS.json|RUNS.jsonl ... | --paired=RUN_A,RUN_B",
          file=sys.stderr)
    return 2
  try:
    records = read_records(argv, REQUIRED_MEAN if mean else REQUIRED)
    if only:
      records = select(records, [n for arg in only for n in arg.split(",") if n])
    cost = read_cost(costs[0]) if costs else None
    print(mean_markdown(records, cost) if mean else markdown(records), end="")
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
