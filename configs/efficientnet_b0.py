"""EfficientNet-B0 on 40x40 patches: stride-1 stem, last map 3x3.

The model is cellvit_jax/models/efficientnet.py.

The architecture fields are Tan & Le's B0 defaults (dropout 0.2, drop connect 0.2, SE 0.25),
except the stem stride. The optimiser settings are our choice, not the paper's (Kagiyama et
al. do not publish theirs): AdamW at lr 2e-3 (batch 128), weight decay 0.05, in place of
EfficientNet's RMSProp 0.256 at batch 4096.
"""
import ml_collections

from cellvit_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.model.name = "efficientnet_b0"
  config.model.kwargs = ml_collections.ConfigDict(dict(
      width_mult=1.0,
      depth_mult=1.0,
      stem_stride=1,      # 2 in the original; 1 keeps 40 -> 20 -> 10 -> 5 -> 3 over the stages
      se_ratio=0.25,
      dropout=0.2,        # before the head
      drop_path=0.2,      # drop connect, rising over blocks
      bn_momentum=0.9,
  ))
  config.optim.lr = 2e-3  # AdamW, our choice for BatchNorm CNNs
  config.optim.weight_decay = 0.05
  return config
