"""Configs as runs stored them (workdir/config.json), brought to today's config: the one place
that knows how older versions' configs differ.

A run written before a config field existed has no value for it. `ADDED_KEYS` says what its
absence meant (e.g. no augment.blur: blur off), `upgrade` fills those in, and `over_defaults`
lays the upgraded file over today's defaults, so every other field a newer version added
takes its default. Resume checks (workdir.config_differences) and loading a finished run
(finished_run.load_config) both go through here; code below them can rely on every field.
"""
import ml_collections
from flax import traverse_util

from cellvit_jax.config import defaults as config_defaults

# Keys added to the config after runs had been written, with the value their absence meant:
# a config.json without them resumes (and loads) under a config holding these values.
ADDED_KEYS = {"augment.blur.prob": 0.0, "augment.blur.sigma_min": 0.0,
              "augment.blur.sigma_max": 1.5,
              "fm.preset": "", "fm.weights": "", "fm.num_heads": 0, "fm.input_size": 0,
              "fm.resize_method": "", "fm.feature": "", "fm.layer_decay": 0.75,
              "fm.probe_l2_grid": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1], "fm.probe_max_steps": 300,
              "fm.feature_batch_size": 64, "fm.cache_dir": "",
              "dataset.on_device": "auto", "dataset.on_device_max_mb": 1024,
              "train.steps_per_dispatch": 1,
              "augment.hed.prob": 0.0, "augment.hed.scale": 0.05, "augment.hed.shift": 0.01,
              "augment.color.prob": 0.0, "augment.color.brightness": 0.1,
              "augment.color.contrast": 0.1, "augment.color.saturation": 0.1,
              "augment.mixup_alpha": 0.0, "augment.cutmix_alpha": 0.0,
              "optim.ema_decay": 0.0, "compile_cache_dir": "auto",
              "probe.method": "logistic", "probe.knn_k_grid": [1, 5, 10, 20, 50],
              "probe.shots": 0, "probe.episodes": 10, "probe.run": "",
              "finetune.method": "full", "finetune.lora_rank": 8, "finetune.lora_alpha": 16.0,
              "finetune.lora_targets": "all",
              # Runs from before the switch read test on every run.
              "evaluate_test": True}

# The same for one model's config.model.kwargs (a switch added to its architecture later).
ADDED_MODEL_KWARGS = {"customvit": {"stem_full_res": True, "stem_blocks": 0,
                                    "stem_blocks_from": 0}}


def upgrade(stored: dict) -> dict:
  """A stored config (nested dicts, as JSON holds it) with the keys it predates filled in."""
  flat = traverse_util.flatten_dict(stored, keep_empty_nodes=True, sep=".")
  for key, value in ADDED_KEYS.items():
    flat.setdefault(key, value)
  for key, value in ADDED_MODEL_KWARGS.get(flat.get("model.name"), {}).items():
    flat.setdefault(f"model.kwargs.{key}", value)
  return traverse_util.unflatten_dict(flat, sep=".")


def over_defaults(stored: dict) -> ml_collections.ConfigDict:
  """Today's default config with the (upgraded) stored values laid over it."""
  config = config_defaults.get_config()
  config.unlock()

  def merge(node, values):
    for key, value in values.items():
      if isinstance(value, dict) and isinstance(node.get(key), ml_collections.ConfigDict):
        merge(node[key], value)
      elif isinstance(value, dict):
        node[key] = ml_collections.ConfigDict(value)
      else:
        node[key] = tuple(value) if isinstance(value, list) else value

  merge(config, upgrade(stored))
  return config
