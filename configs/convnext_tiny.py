"""ConvNeXt-T on 40x40 patches: 2x2 patchify stem, stages 20, 10, 5, 3.

The model is cellvit_jax/models/convnext.py.

The architecture fields are Liu et al.'s ConvNeXt-T defaults (drop path 0.1, layer scale 1e-6),
except the stem patch. The optimiser settings are our choice, not the paper's (Kagiyama et al.
do not publish theirs): AdamW at lr 1e-3 (batch 128), weight decay 0.05. ConvNeXt's own recipe
is AdamW 4e-3 at batch 4096 over 300 epochs; scaled linearly to batch 128 that is 1.25e-4,
too slow for our short runs.
"""
import ml_collections

from cellvit_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.model.name = "convnext_tiny"
  config.model.kwargs = ml_collections.ConfigDict(dict(
      depths=(3, 3, 9, 3),
      dims=(96, 192, 384, 768),
      stem_patch=2,            # 4 in the original; 40 -> 20 -> 10 -> 5 -> 3
      drop_path=0.1,
      layer_scale_init=1e-6,
  ))
  config.optim.lr = 1e-3       # AdamW, our choice
  config.optim.weight_decay = 0.05
  return config
