"""mode=finetune: a foundation model trained end to end by the same loop as the small models.

    python -m cellvit_jax.main --config=configs/fm.py:phikon,finetune --config.fm.weights=DIR

What differs from training a small model (input resize and normalisation, the weight-decay
mask, layer-wise lr decay from config.fm.layer_decay, the published weights loaded into a
fresh state) comes with the model (models/fm/foundation.py), so train.train_and_evaluate runs
it unchanged.  With config.finetune.method='lora' (models/fm/lora.py) the base stays frozen
and only low-rank adapters and the head train, through the same loop.
"""
import os

from cellvit_jax.models.fm import lora
from cellvit_jax.modes import train


def require_fm(config):
  """A clear error for an FM mode whose config names no preset."""
  if not config.get("fm") or not config.fm.preset:
    raise ValueError(f"config.mode={config.mode!r} needs a foundation model: use "
                     "--config=configs/fm.py:<phikon|uni|plip>,<probe|finetune>")


def run_mode(config, workdir: str = ""):
  require_fm(config)
  if "finetune" in config:
    lora.check_finetune(config.finetune, ema_decay=float(config.optim.ema_decay))
  return train.run_mode(config, workdir or os.path.join("runs", f"{config.fm.preset}_finetune"))
