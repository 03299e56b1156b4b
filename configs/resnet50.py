"""ResNet-50 on 40x40 patches: 3x3 stride-1 stem, no max-pool (cellvit_jax/models/resnet.py).

The architecture fields are He et al.'s ResNet-50 defaults (bottleneck blocks, v1.5 striding).
The optimiser settings are our choice, not the paper's (Kagiyama et al. do not publish theirs):
AdamW at lr 2e-3 (batch 128), weight decay 0.05, in place of ResNet's SGD 0.1.
"""
import ml_collections

from cellvit_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.model.name = "resnet50"
  config.model.kwargs = ml_collections.ConfigDict(dict(
      stage_sizes=(3, 4, 6, 3),   # bottleneck blocks per stage: 40x40, 20x20, 10x10, 5x5
      bottleneck=True,
      width=64,                   # bottleneck widths 64..512, outputs 256..2048
      zero_init_residual=False,
      bn_momentum=0.9,
  ))
  config.optim.lr = 2e-3          # AdamW, our choice for BatchNorm CNNs
  config.optim.weight_decay = 0.05
  return config
