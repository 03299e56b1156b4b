"""Markdown table of finished runs: one row per results.json (or per line of a .jsonl of them).

    python -m cellvit_jax.experiments.results_table runs/*/results.json
    python -m cellvit_jax.experiments.results_table docs/results/models_fl1024_h100.jsonl

Rows are sorted by test accuracy, best first. Numbers are read from the files, never typed.
A record needs model, flaglimit, num_params and test{accuracy, balanced_accuracy, macro_f1};
an optional `tag` names a variant of a model (an ablation).
"""
import json
import sys
from typing import List, Sequence

REQUIRED = ("model", "flaglimit", "num_params", "test")


def read_records(paths: Sequence[str]) -> List[dict]:
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
      missing = [k for k in REQUIRED if k not in doc]
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
        r.get("tag") or r["model"], str(r["flaglimit"]), f"{r['num_params'] / 1e6:.2f} M",
        f"{r['test']['accuracy']:.4f}", f"{r['test']['balanced_accuracy']:.4f}",
        f"{r['test']['macro_f1']:.4f}", f"{ips:.0f}" if ips else "n/a", str(r.get("steps", "")),
        r.get("platform", "")]) + " |")
  return "\n".join(lines) + "\n"


def main(argv):
  if not argv:
    print("usage: python -m cellvit_jax.experiments.results_table RESULTS.json|RUNS.jsonl ...",
          file=sys.stderr)
    return 2
  try:
    print(markdown(read_records(argv)), end="")
  except (OSError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
