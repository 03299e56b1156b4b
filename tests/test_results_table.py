"""experiments.results_table: rows from results.json / .jsonl files, best first; bad files named."""
import json

import pytest

from cellvit_jax.experiments import results_table


def _record(model, acc, **extra):
  return {"model": model, "flaglimit": 256, "num_params": 1_500_000, "steps": 10,
          "train_images_per_sec": 100.0, "platform": "cpu",
          "test": {"accuracy": acc, "balanced_accuracy": acc, "macro_f1": acc - 0.01}, **extra}


def test_rows_sorted_best_first_with_tags(tmp_path):
  single = tmp_path / "results.json"
  single.write_text(json.dumps(_record("resnet18", 0.5)))
  many = tmp_path / "runs.jsonl"
  many.write_text(json.dumps(_record("customvit", 0.9)) + "\n"
                  + json.dumps(_record("customvit", 0.7, tag="customvit_gap")) + "\n")
  table = results_table.markdown(results_table.read_records([str(single), str(many)]))
  rows = [line.split(" | ")[0].strip("| ") for line in table.splitlines()[2:]]
  assert rows == ["customvit", "customvit_gap", "resnet18"]
  assert "| 0.9000 | 0.9000 | 0.8900 |" in table and "1.50 M" in table


def test_bad_files_are_named(tmp_path, capsys):
  broken = tmp_path / "results.json"
  broken.write_text("{not json")
  with pytest.raises(ValueError, match="results.json is not JSON"):
    results_table.read_records([str(broken)])
  partial = tmp_path / "other.json"
  partial.write_text(json.dumps({"model": "x"}))
  assert results_table.main([str(partial)]) == 2
  assert "lacks ['flaglimit', 'num_params', 'test']" in capsys.readouterr().err
