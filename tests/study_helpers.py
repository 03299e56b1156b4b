"""A tiny study config shared by the study, report and multi-process tests."""
import os

import ml_collections

from conftest import REPO, TINY_SPEC
from cellvit_jax.config import files as config_files

# Tiny versions of two rows: the per-model architecture overrides go in each row's `set`.
TINY_ROWS = {
    "customvit": {"config": "configs/customvit.py", "set": {"model": {"kwargs": {
        "dim": 16, "depth": 1, "num_heads": 2, "patch_size": 8, "drop_path": 0.0}}}},
    "resnet18": {"config": "configs/resnet18.py", "set": {"model": {"kwargs": {
        "stage_sizes": (1, 1), "width": 8}}}},
}


def tiny_study_config(data_dir, rows=("customvit", "resnet18"), flaglimits=(32, 64), seeds=(0,),
                      **study_fields):
  config = config_files.load(os.path.join(REPO, "configs", "study.py"))
  config.study.models = ml_collections.ConfigDict({r: TINY_ROWS[r] for r in rows})
  config.study.flaglimits = tuple(flaglimits)
  config.study.seeds = tuple(seeds)
  config.study.set = ml_collections.ConfigDict({
      "dataset": {"name": "synthetic_cells_tiny", "data_dir": data_dir,
                  "synthetic": dict(TINY_SPEC)},
      "train": {"batch_size": 32, "eval_batch_size": 64, "epochs": 1.0, "log_every_steps": 4,
                "progress_bar": False, "eval_every_epochs": 1.0},
      "optim": {"lr": 3e-3, "warmup_epochs": 0.5},
  })
  config.study.blur.sigmas = (0.0, 1.0)
  config.study.cost.batch_sizes = (1, 8)
  config.study.cost.min_seconds = 0.05
  for k, v in study_fields.items():
    config.study[k] = v
  return config


def write_cli_config(path, data_dir, **kwargs) -> str:
  """A config file for `python -m cellvit_jax.main --config=<path>` holding the tiny study."""
  tests = os.path.dirname(os.path.abspath(__file__))
  path = str(path)
  with open(path, "w") as f:
    f.write(f"import sys\nsys.path.insert(0, {tests!r})\n"
            "from study_helpers import tiny_study_config\n\n\n"
            f"def get_config():\n  return tiny_study_config({data_dir!r}, **{kwargs!r})\n")
  return path
