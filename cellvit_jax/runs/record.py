"""The results.json record every finished run writes, and its printed summary.

`results_record(...)` is the dict train, finetune and probe write (the keys the study, the
report and results_table read); `summary_table(results)` the short table main prints.
"""
import os

import jax


def results_record(config_dict: dict, dataset, counts, mesh, test: dict, val: dict,
                   workdir: str, **fields) -> dict:
  """The results.json every finished run writes (train, finetune, probe): the keys that the
  study, the report and results_table read, plus the mode's own `fields`. `config_dict` is
  the run's config as config.json holds it. `test` is None for a screening run (its test
  split sealed: runs/sealed_test.py), and the record then has no "test" key."""
  record = {
      "finished": True,
      "model": fields.pop("model", config_dict["model"]["name"]),
      "dataset": dataset.name,
      "flaglimit": config_dict["dataset"]["flaglimit"],
      "seed": config_dict["seed"],
      "train_examples": int(sum(counts)),
      "train_counts": dict(zip(dataset.class_names, [int(c) for c in counts])),
      **fields,
      "devices": mesh.devices.size,
      "platform": jax.devices()[0].platform,
      "test": test,
      "val": val,
      "workdir": workdir,
      "config": config_dict,
  }
  if test is None:
    del record["test"]
  return record


def _with_ci(split: dict, metric: str) -> str:
  ci = split.get(f"{metric}_ci95")
  return f"{split[metric]:.4f}" + (f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else "")


def summary_table(results: dict) -> str:
  """The printed summary: test metrics of a run that read test, val metrics of a screening
  run (which has none of test to print)."""
  split = "test" if "test" in results else "val"
  scores = results[split]
  ips = results.get("train_images_per_sec")
  rows = [
      ("model", results["model"]),
      ("dataset", f"{results['dataset']} (FlagLimit {results['flaglimit']}, "
                  f"{results['train_examples']} training patches)"),
      (f"{split} accuracy", _with_ci(scores, "accuracy")),
      (f"{split} balanced accuracy", _with_ci(scores, "balanced_accuracy")),
      (f"{split} macro-F1", _with_ci(scores, "macro_f1")),
      ("train images/s", f"{ips:.1f}" if ips else "n/a (no timed steps in this run)"),
      ("results", os.path.join(results["workdir"], "results.json")),
  ]
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
