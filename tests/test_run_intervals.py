"""Finished runs carry bootstrap intervals and their test predictions; results_table shows the
intervals and pairs two runs (--paired=A,B)."""
import json
import os
import shutil

import numpy as np
import pytest

from cellvit_jax import bootstrap, metrics
from cellvit_jax.data import pipeline
from cellvit_jax.experiments import cost, results_table
from cellvit_jax.modes import finished_run
from cellvit_jax.runs import record, test_predictions


def test_train_run_stores_predictions_that_give_its_metrics_and_intervals(tiny_trained_run):
  with open(os.path.join(tiny_trained_run, "results.json")) as f:
    results = json.load(f)
  stored = test_predictions.load(tiny_trained_run)
  run = finished_run.load_run(tiny_trained_run)
  images, labels = pipeline.load_arrays(run.dataset.source("test"),
                                        range(len(run.dataset.labels("test"))))
  # The stored predictions are the model's: recomputed through the restored run.
  np.testing.assert_array_equal(stored["labels"], labels)
  recomputed = np.argmax(np.asarray(run.logits(images)), -1)
  np.testing.assert_array_equal(stored["predictions"], recomputed)
  assert (stored["split"], stored["dataset"]) == ("test", run.dataset.name)
  k = len(stored["class_names"])
  scored = metrics.from_confusion(metrics.confusion(labels, stored["predictions"], k))
  test = results["test"]
  for m in ("accuracy", "balanced_accuracy", "macro_f1", "confusion_matrix"):
    assert test[m] == scored[m]
  assert {key: test[key] for key in test if key.endswith("_ci95")} == bootstrap.intervals(
      labels, stored["predictions"], k)
  lo, hi = test["accuracy_ci95"]
  assert f"{test['accuracy']:.4f} (95% CI {lo:.4f}-{hi:.4f})" in record.summary_table(results)
  for split in (test, results["val"]):
    for m in bootstrap.METRICS:
      lo, hi = split[f"{m}_ci95"]
      assert 0 <= lo <= hi <= 1


def test_paired_table_and_a_different_test_set_is_refused(tiny_trained_run, tmp_path, capsys):
  a = test_predictions.load(tiny_trained_run)
  other = tmp_path / "other"
  other.mkdir()
  flipped = a["predictions"].copy()
  flipped[::3] = (flipped[::3] + 1) % len(a["class_names"])
  test_predictions.save(str(other), a["dataset"], a["split"], a["labels"], flipped,
                        a["class_names"])
  assert results_table.main([f"--paired={tiny_trained_run},{other}"]) == 0
  out = capsys.readouterr().out
  want = bootstrap.paired(a["labels"], a["predictions"], flipped, len(a["class_names"]))
  row = next(line for line in out.splitlines() if line.startswith("| accuracy |"))
  lo, hi = want["accuracy"]["ci"]
  assert row == (f"| accuracy | {want['accuracy']['a']:.4f} | {want['accuracy']['b']:.4f} | "
                 f"{want['accuracy']['difference']:+.4f} | [{lo:+.4f}, {hi:+.4f}] |")
  assert f"{len(a['labels'])} examples" in out

  for name, labels in [("shorter", a["labels"][:-1]), ("reordered", a["labels"][::-1])]:
    bad = tmp_path / name
    bad.mkdir()
    test_predictions.save(str(bad), a["dataset"], a["split"], labels, labels, a["class_names"])
    assert results_table.main([f"--paired={tiny_trained_run},{bad}"]) == 2
    err = capsys.readouterr().err
    assert "not predictions on the same test set" in err
    assert str(bad / "test_predictions.npz") in err and tiny_trained_run in err
  missing = tmp_path / "old_run"
  shutil.copytree(tiny_trained_run, missing, ignore=shutil.ignore_patterns("test_predictions*"))
  assert results_table.main([f"--paired={missing},{other}"]) == 2
  assert "test_predictions.npz does not exist" in capsys.readouterr().err
  assert results_table.main([f"--paired={other}"]) == 2  # one run is not a pair
  assert "usage" in capsys.readouterr().err


def test_tables_show_intervals_where_present():
  def rec(seed, acc, ci=None):
    split = {"accuracy": acc, "balanced_accuracy": acc, "macro_f1": acc}
    if ci:
      split.update({f"{m}_ci95": ci for m in bootstrap.METRICS})
    return {"model": "customvit", "flaglimit": 256, "num_params": 1_000_000, "seed": seed,
            "test": split, "val": dict(split)}
  table = results_table.markdown([rec(0, 0.9, [0.85, 0.95]), rec(1, 0.8)])
  assert "| 0.9000 [0.8500, 0.9500] | 0.9000 [0.8500, 0.9500] | 0.9000 [0.8500, 0.9500] |" in table
  assert "| 0.8000 | 0.8000 | 0.8000 |" in table  # a row without intervals, as before
  one = results_table.mean_markdown([rec(0, 0.9, [0.85, 0.95])])
  assert "| 0.9000 [0.8500, 0.9500] | 0.9000 [0.8500, 0.9500] |" in one
  seeds = results_table.mean_markdown([rec(0, 0.9, [0.85, 0.95]), rec(1, 0.8, [0.7, 0.9])])
  assert "| 0.8500 +- 0.0707 | 0.8500 +- 0.0707 |" in seeds  # over seeds: mean +- std only


# Generated tables of the docs and the results_table arguments that regenerate each.
DOC_TABLES = [
    ("docs/customvit.md:ihc", ["--mean", "docs/results/ihc_demo_cpu.jsonl"]),
    ("docs/customvit.md:screening", ["--mean", "docs/results/customvit_design.jsonl"]),
    ("docs/customvit.md:final", ["--mean", "docs/results/customvit_fl1024_cpu.jsonl"]),
    ("docs/models.md:accuracy", ["docs/results/models_fl1024_h100.jsonl"]),
    ("docs/customvit.md:comparison", [
        "--mean", "--cost=docs/results/cost_cpu.json",
        "--only=densenet121,resnet18,resnet50,efficientnet_b0,convnext_tiny,vit_small,swin_tiny,"
        "customvit,customvit_patch4,customvit_hybrid,customvit_lr2e-3,customvit_hybrid_lr2e-3",
        "docs/results/models_fl1024_h100.jsonl", "docs/results/customvit_fl1024_cpu.jsonl"]),
]
# Checked by their own tests below.
OTHER_CHECKED = {"docs/customvit.md:ihc paired", "docs/models.md:cost"}
# Written by a measuring script with no row under docs/results/ (docs/foundation_models.md
# says so beside it): not regenerable from rows.
NOT_FROM_ROWS = {"docs/foundation_models.md:fm cost"}


@pytest.mark.parametrize("doc, args", DOC_TABLES)
def test_committed_tables_are_generated_from_their_rows(doc, args, capsys):
  path, block = doc.split(":")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(repo, path)) as f:
    text = f.read()
  start, end = f"<!-- {block} table: start -->\n", f"<!-- {block} table: end -->"
  committed = text[text.index(start) + len(start):text.index(end)]
  assert results_table.main([os.path.join(repo, a) if a.startswith("docs/") else
                             a.replace("=docs/", f"={repo}/docs/") for a in args]) == 0
  assert capsys.readouterr().out == committed


def test_committed_cost_table_is_generated_from_its_rows():
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(repo, "docs", "models.md")) as f:
    text = f.read()
  start, end = "<!-- cost table: start -->\n", "<!-- cost table: end -->"
  committed = text[text.index(start) + len(start):text.index(end)]
  rows_file = "docs/results/cost_cpu.json"
  table = cost.markdown_table(cost.read_rows(os.path.join(repo, rows_file)), source=rows_file)
  assert committed.startswith(table)
  assert committed[len(table):].startswith(f"Made by `python -m cellvit_jax.experiments.cost "
                                           f"--rows={rows_file}` on ")


def test_every_generated_table_of_the_docs_is_checked():
  """Each delimited block in README.md and docs/*.md is one that a test above regenerates."""
  import glob
  import re
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  found = set()
  for path in [os.path.join(repo, "README.md")] + sorted(glob.glob(os.path.join(repo, "docs",
                                                                                "*.md"))):
    with open(path) as f:
      for block in re.findall(r"<!-- (.+?) table: start -->", f.read()):
        found.add(f"{os.path.relpath(path, repo)}:{block}")
  checked = {doc for doc, _ in DOC_TABLES} | OTHER_CHECKED | NOT_FROM_ROWS
  assert found == checked, (f"generated tables without a regeneration test: {found - checked}; "
                            f"listed here but gone from the docs: {checked - found}")


def test_implied_predictions_only_where_the_confusion_matrix_fixes_them():
  labels = np.array([0, 1, 1, 0, 2, 1])
  perfect = metrics.confusion(labels, labels, 3)
  np.testing.assert_array_equal(test_predictions.implied(labels, perfect), labels)
  one_class = np.full(6, 1)
  np.testing.assert_array_equal(
      test_predictions.implied(labels, metrics.confusion(labels, one_class, 3)), one_class)
  swapped = np.array([1, 0, 0, 1, 2, 0])  # whole classes moved: still fixed
  np.testing.assert_array_equal(
      test_predictions.implied(labels, metrics.confusion(labels, swapped, 3)), swapped)
  with pytest.raises(ValueError, match=r"leaves open .* class\(es\) \[1\]"):
    test_predictions.implied(labels, metrics.confusion(labels, [0, 1, 2, 0, 2, 1], 3))
  with pytest.raises(ValueError, match="another test set"):
    test_predictions.implied(labels[:-1], metrics.confusion(labels, labels, 3))


def test_committed_ihc_paired_table_is_generated_from_its_predictions(monkeypatch, capsys):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  monkeypatch.chdir(repo)  # the table names the files as the docs' command does
  with open("docs/customvit.md") as f:
    text = f.read()
  start, end = "<!-- ihc paired table: start -->\n", "<!-- ihc paired table: end -->"
  committed = text[text.index(start) + len(start):text.index(end)]
  d = "docs/results/ihc_demo_test_predictions"
  for s in range(3):
    pair = f"{d}/customvit_lr2e-3_s{s}.npz,{d}/resnet18_s{s}.npz"
    assert results_table.main([f"--paired={pair}"]) == 0
  assert capsys.readouterr().out == committed
