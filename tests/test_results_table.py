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


def test_mean_over_seeds_sorted_by_val_and_test_only_where_every_seed_has_it(tmp_path):
  def rec(tag, seed, val, test=None):
    r = {"model": "customvit", "tag": tag, "recipe": "base15", "flaglimit": 1024, "seed": seed,
         "num_params": 300_000, "gflops_per_image": 0.1, "host": "cpu X",
         "val": {"accuracy": val}}
    if test is not None:
      r["test"] = {"accuracy": test}
    return json.dumps(r)
  path = tmp_path / "design.jsonl"
  path.write_text("\n".join([rec("a", 0, 0.80), rec("b", 0, 0.90, 0.89), rec("b", 1, 0.92, 0.91),
                             rec("a", 1, 0.82, 0.5)]) + "\n")
  table = results_table.mean_markdown(results_table.read_records([str(path)],
                                                                 results_table.REQUIRED_MEAN))
  rows = [line.split(" | ") for line in table.splitlines()[2:]]
  assert [r[0].strip("| ") for r in rows] == ["b", "a"]
  assert rows[0][6] == "0.9100 +- 0.0141" and rows[0][7] == "0.9000 +- 0.0141"
  assert rows[1][7] == "-"  # one seed of 'a' lacks test: no partial mean is shown
  path.write_text(rec("a", 0, 0.8) + "\n" + rec("a", 0, 0.8) + "\n")
  with pytest.raises(ValueError, match="two records of one seed"):
    results_table.mean_markdown(
        results_table.read_records([str(path)], results_table.REQUIRED_MEAN))


def test_only_keeps_the_named_variants_and_names_a_typo(tmp_path, capsys):
  path = tmp_path / "runs.jsonl"
  path.write_text("\n".join(json.dumps(_record(m, a, seed=0, val={"accuracy": a}, **extra))
                            for m, a, extra in [("resnet18", 0.9, {}), ("densenet121", 0.8, {}),
                                                ("customvit", 0.7, {"tag": "hybrid"})]) + "\n")
  assert results_table.main(["--mean", "--only=hybrid,resnet18", str(path)]) == 0
  rows = [line.split(" | ")[0].strip("| ") for line in capsys.readouterr().out.splitlines()[2:]]
  assert rows == ["resnet18", "hybrid"]
  assert results_table.main(["--only=resnet81", str(path)]) == 2
  assert "--only names ['resnet81'] match no record" in capsys.readouterr().err


def test_cost_file_fills_gflops_by_model_and_size_only(tmp_path, capsys):
  runs = tmp_path / "runs.jsonl"
  runs.write_text("\n".join(json.dumps(_record(m, 0.9, seed=0, val={"accuracy": 0.9}, **extra))
                            for m, extra in [("resnet18", {"num_params": 11}),
                                             ("customvit", {"num_params": 5, "tag": "other_size"}),
                                             ("densenet121", {"num_params": 7,
                                                              "gflops_per_image": 2.5})]) + "\n")
  cost = tmp_path / "cost.json"
  cost.write_text(json.dumps([
      {"model": "resnet18", "params": 11, "gflops_per_image": 1.5, "device": "cpu",
       "images_per_sec": {"1": 30.0, "256": 61.0}},
      {"model": "customvit", "params": 4, "gflops_per_image": 0.04, "device": "cpu",
       "images_per_sec": {"256": 900.0}},
      {"model": "densenet121", "params": 7, "gflops_per_image": 9.9, "device": "cpu",
       "images_per_sec": {"256": 18.0}}]))
  assert results_table.main(["--mean", f"--cost={cost}", str(runs)]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert "inference images/s (cpu)" in lines[0]
  rows = {r[0].strip("| "): r for r in (line.split(" | ") for line in lines[2:])}
  assert rows["resnet18"][5] == "1.500" and rows["resnet18"][6] == "61 @256"
  assert rows["other_size"][5] == "n/a" and rows["other_size"][6] == "n/a"  # 5 != 4 params
  assert rows["densenet121"][5] == "2.500"  # the record's own figure wins
  # All three at test 0.9: resnet18 (1.5 GFLOPs) is the cheapest known, densenet121 is dominated.
  assert lines[0].endswith("on the frontier |")
  assert [rows[n][-1].strip(" |") for n in ("resnet18", "densenet121", "other_size")] == [
      "yes", "", "-"]
  cost.write_text('{"model": "resnet18"}')
  assert results_table.main(["--mean", f"--cost={cost}", str(runs)]) == 2
  assert "not a list of cost rows" in capsys.readouterr().err
  assert results_table.main([f"--cost={cost}", str(runs)]) == 2  # --cost needs --mean


def test_frontier_keeps_the_points_nothing_beats_on_both_axes():
  points = [(0.90, 0.1), (0.92, 1.0), (0.91, 2.0), (0.92, 1.0), (None, 0.1), (0.95, None)]
  assert results_table.frontier(points) == [True, True, False, True, None, None]
