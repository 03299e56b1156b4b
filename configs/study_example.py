"""The tiny CPU demo study behind docs/example_study/ (a smoke run, not the paper's results).

  python -m cellvit_jax.main --config=configs/study_example.py --workdir=runs/example_study
  python -m cellvit_jax.experiments.report --study_dir=runs/example_study \
      --output_dir=docs/example_study

Two rows (CustomViT at its default size, and ResNet-18 at width 16 and one block per stage so
it fits a CPU), FlagLimit 256 and 512, one seed, 6 epochs, on `synthetic_cells_demo`: the
embedded synthetic_cells recipe at 40 specimens x 400 cells.  About 10 minutes on 2 shared
CPU cores.  The real grid is configs/study.py.
"""
import os

import ml_collections

from cellvit_jax.config import defaults as config_defaults
from cellvit_jax.config import files as config_files


def get_config():
  # configs/study.py, found next to this file whatever the working directory.
  config = config_files.load("study.py", base_dir=os.path.dirname(os.path.abspath(__file__)))
  study = config.study
  study.models = ml_collections.ConfigDict({
      "customvit": {"config": "configs/customvit.py", "set": {}},
      "resnet18_w16": {"config": "configs/resnet18.py", "set": {"model": {"kwargs": {
          "width": 16, "stage_sizes": (1, 1, 1, 1)}}}},
  })
  study.flaglimits = (256, 512)
  study.seeds = (0,)
  synthetic = config_defaults.get_config().dataset.synthetic.to_dict()
  synthetic.update(num_specimens=40, cells_per_specimen=400, val_specimens=4, test_specimens=4)
  study.set = ml_collections.ConfigDict({
      "dataset": {"name": "synthetic_cells_demo", "data_dir": "", "synthetic": synthetic},
      "train": {"epochs": 6.0, "eval_every_epochs": 6.0, "checkpoint_every_epochs": 6.0,
                "progress_bar": False},
  })
  study.blur.sigmas = (0.0, 0.5, 1.0, 2.0, 3.0)
  study.cost.min_seconds = 1.0
  return config
