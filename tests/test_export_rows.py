"""experiments.export_rows: a finished run -> one JSON line; test kept only for finals."""
import json

import pytest
from absl import flags

from cellvit_jax.config import defaults as config_defaults
from cellvit_jax.experiments import export_rows


def _run(tmp_path, name="run", seed=0):
  config = config_defaults.get_config()
  config.model.kwargs.update(dict(dim=16, depth=1, num_heads=2))
  config.evaluate_test = True  # a final run, whose test --with_test may export
  record = {"finished": True, "model": "customvit", "dataset": "d", "flaglimit": 8, "seed": seed,
            "train_examples": 16, "train_counts": {"a": 8, "b": 8}, "num_params": 123,
            "devices": 1, "platform": "cpu", "test": {"accuracy": 0.5}, "val": {"accuracy": 0.6},
            "workdir": str(tmp_path / name), "config": config.to_dict()}
  (tmp_path / name).mkdir()
  (tmp_path / name / "results.json").write_text(json.dumps(record))
  return str(tmp_path / name)


def test_screening_rows_carry_val_only_and_finals_keep_test(tmp_path):
  run = _run(tmp_path)
  row = export_rows.row(run, "v", "base15")
  assert "test" not in row and row["val"] == {"accuracy": 0.6} and "config" not in row
  assert row["tag"] == "v" and row["recipe"] == "base15" and row["model_kwargs"]["dim"] == 16
  assert 0 < row["gflops_per_image"] < 0.1 and row["host"]
  assert export_rows.row(run, "v", "base30", with_test=True)["test"] == {"accuracy": 0.5}


def test_a_run_is_not_written_twice_and_unfinished_runs_are_named(tmp_path):
  run = _run(tmp_path)
  out = tmp_path / "rows.jsonl"
  export_rows.define_flags()
  flags.FLAGS(["export_rows", "--tag=v", "--recipe=base15", f"--output={out}"])
  try:
    export_rows.main(["export_rows", run])
    assert len(out.read_text().splitlines()) == 1
    with pytest.raises(SystemExit, match="already in"):
      export_rows.main(["export_rows", run])
    assert len(out.read_text().splitlines()) == 1  # the file is untouched
  finally:
    flags.FLAGS.unparse_flags()
  with pytest.raises(ValueError, match="finished run's workdir"):
    export_rows.row(str(tmp_path / "nothing"), "v", "base15")
