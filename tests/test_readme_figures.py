"""The README's results table and the figures around it, recomputed from the rows under
docs/results/ they name (the table is typed in the README: its columns are not
results_table's, so this test stands in for regenerating it)."""
import json
import os
import re
import statistics

from conftest import REPO

RESULTS = os.path.join(REPO, "docs", "results")

# README table label -> (rows file, which records of it).
TABLE_ROWS = {
    "DenseNet-121": ("models_fl1024_h100.jsonl", lambda r: r["model"] == "densenet121"),
    "ResNet-18": ("models_fl1024_h100.jsonl", lambda r: r["model"] == "resnet18"),
    "CustomViT hybrid (`configs/customvit_hybrid.py`)": (
        "customvit_fl1024_cpu.jsonl",
        lambda r: r.get("tag") == "customvit_hybrid_lr2e-3" and r["recipe"] == "base30_lr2e-3"),
    "CustomViT default (`configs/customvit.py`)": (
        "customvit_fl1024_cpu.jsonl",
        lambda r: r.get("tag") == "customvit_lr2e-3" and r["recipe"] == "base30_lr2e-3"),
}


def _rows(name):
  with open(os.path.join(RESULTS, name)) as f:
    return [json.loads(line) for line in f if line.strip()]


def _gflops(record):
  """The row's own GFLOPs, else cost_cpu.json's row of the same model and parameter count
  (as results_table --cost matches them)."""
  if record.get("gflops_per_image"):
    return record["gflops_per_image"]
  with open(os.path.join(RESULTS, "cost_cpu.json")) as f:
    (cost,) = [c for c in json.load(f)
               if c["model"] == record["model"] and c["params"] == record["num_params"]]
  return cost["gflops_per_image"]


def _readme():
  with open(os.path.join(REPO, "README.md")) as f:
    return f.read()


def _table(text):
  header = "| model | test accuracy | seeds | GFLOPs/image | recipe | device | rows |"
  lines = text[text.index(header):].split("\n\n")[0].splitlines()[2:]
  return {cells[0]: cells[1:] for cells in
          ([c.strip() for c in line.strip("|").split("|")] for line in lines)}


def _accuracy(records):
  values = [r["test"]["accuracy"] for r in records]
  if len(values) == 1:
    return f"{values[0]:.4f}"
  return f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"


def test_readme_results_table_matches_its_rows():
  table = _table(_readme())
  assert set(table) == set(TABLE_ROWS), "a README table row without a rows entry here"
  for label, (name, pick) in TABLE_ROWS.items():
    records = [r for r in _rows(name) if pick(r)]
    accuracy, seeds, gflops, _, _, rows_file = table[label]
    assert accuracy == _accuracy(records), label
    assert seeds == str(len(records)), label
    assert gflops == f"{_gflops(records[0]):.3f}", label
    assert rows_file == f"`{name}`", label


def test_readme_figures_around_the_table_match_the_rows():
  text = " ".join(_readme().split())
  mean = {label: statistics.mean(r["test"]["accuracy"] for r in _rows(name) if pick(r))
          for label, (name, pick) in TABLE_ROWS.items()}
  best = mean["CustomViT hybrid (`configs/customvit_hybrid.py`)"]
  behind = [f"{100 * (mean[m] - best):.1f}" for m in ("DenseNet-121", "ResNet-18")]
  assert (f"our best CustomViT is {behind[0]} points behind DenseNet-121 and {behind[1]} "
          "behind ResNet-18") in text
  hybrid = _gflops(next(r for r in _rows("customvit_fl1024_cpu.jsonl")
                        if r.get("tag") == "customvit_hybrid_lr2e-3"))
  ratios = [round(_gflops(next(r for r in _rows("models_fl1024_h100.jsonl")
                               if r["model"] == m)) / hybrid) for m in ("densenet121", "resnet18")]
  assert f"at about 1/{ratios[0]} and 1/{ratios[1]} of their GFLOPs" in text
  (default_run,) = [r for r in _rows("customvit_fl1024_cpu.jsonl")
                    if r.get("tag") == "customvit_default_run_intel"]
  assert re.search(rf"row `customvit_default_run_intel`: recipe `{default_run['recipe']}`.*"
                   rf"ended at test accuracy {default_run['test']['accuracy']:.4f}", text)
