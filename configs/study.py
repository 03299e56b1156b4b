"""mode=study: every model x FlagLimit (256 ... 16,384 per class) x 3 seeds, then blur and cost.

  python -m cellvit_jax.main --config=configs/study.py --workdir=study
  python -m cellvit_jax.experiments.report --study_dir=study

Rows are named config specs; each row may carry overrides (`set`) on top of its config
file, and `config.study.set` applies to every row (the dataset, typically):

  --config.study.set.dataset.name=my_cells --config.study.rows=customvit,resnet18
  --config.study.flaglimits="(256, 1024)" --config.study.seeds="(0,)"

FM rows: the `fm` argument adds phikon/uni/plip x probe/finetune (configs/fm.py:<fm>,<mode>);
`fm=uni2,virchow2` adds those presets instead, `fm=all` all eight (models/fm/presets.py).
Each row's weights default to its preset's hub id (fetched into the Hugging Face cache;
gated ones need HF_TOKEN); give a local folder instead with, e.g.
  --config=configs/study.py:fm --config.study.models.uni_probe.set.fm.weights=~/fm/uni

The grid, seeds and blur grid are our choices; the paper publishes only its FlagLimit range
(256 ... 16,384).  See docs/study.md.
"""
import ml_collections

from cellvit_jax.models.fm import presets as fm_presets
from cellvit_jax.modes import robustness

SMALL_MODELS = ("customvit", "resnet18", "resnet50", "densenet121", "efficientnet_b0",
                "convnext_tiny", "vit_small", "swin_tiny")
FMS = ("phikon", "uni", "plip")
FM_MODES = ("probe", "finetune")


def get_config(arg: str = ""):
  config = ml_collections.ConfigDict()
  config.mode = "study"
  study = config.study = ml_collections.ConfigDict()
  # name -> {config: spec, set: overrides of that config}; the name is the folder under runs/.
  models = {m: {"config": f"configs/{m}.py", "set": {}} for m in SMALL_MODELS}
  if arg == "fm" or arg.startswith("fm="):
    fms = FMS if arg == "fm" else arg[3:].split(",")
    fms = fm_presets.names() if fms == ["all"] else fms
    for fm in fms:
      fm_presets.get(fm)  # a clear error naming the valid presets
    # fm.weights per row: the preset's hub id unless set, e.g.
    # --config.study.models.uni_probe.set.fm.weights=~/fm/uni
    models.update({f"{fm}_{mode}": {"config": f"configs/fm.py:{fm},{mode}",
                                    "set": {"fm": {"weights": fm_presets.get(fm).hub_id}}}
                   for fm in fms for mode in FM_MODES})
  elif arg:
    raise ValueError(f"configs/study.py takes no argument, 'fm', 'fm=<preset>,<preset>' or "
                     f"'fm=all', got {arg!r}")
  study.models = ml_collections.ConfigDict(models)
  study.rows = ""                          # comma list of row names to run; "" = all
  study.flaglimits = tuple(2 ** k for k in range(8, 15))   # 256 ... 16,384 per class
  study.seeds = (0, 1, 2)
  # Overrides applied to every cell's config (before the row's own `set`). One training length
  # for every row, so that a model config's own default (configs/customvit.py trains 20
  # epochs, sized for the README's CPU run) never makes the rows' recipes differ.
  study.set = ml_collections.ConfigDict({
      "dataset": {"name": "synthetic_cells", "data_dir": ""},
      "train": {"progress_bar": False, "epochs": 15.0},
  })
  # False: the grid's runs are final rows (each reads test once; the report tabulates test).
  # True: a screening study, every cell sealed (config.evaluate_test=False), its blur and
  # robustness on val, its report on val.
  study.screening = False
  study.parallel = "data"                  # "data" | "cells" (see modes/study.py)
  study.worker = ""                        # "k/n" for parallel="cells"; "" -> $CELLVIT_WORKER
  study.max_cells = 0                      # stop after this many cells in this invocation (0: all)
  study.blur = ml_collections.ConfigDict(dict(
      sigmas=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0), split="", batch_size=0, truncate=3.0,
      boundary="reflect"))
  # mode=robustness on every cell after blur (off by default; modes/robustness.py's grids).
  study.robustness = robustness.get_config_section()
  study.robustness.enabled = False
  del study.robustness.run, study.robustness.data_dir
  study.cost = ml_collections.ConfigDict(dict(enabled=True, batch_sizes=(1, 256), min_seconds=2.0))
  return config
