"""ResNet-18 on 40x40 patches: 3x3 stride-1 stem, no max-pool (cellvit_jax/models/resnet.py).

The architecture fields are He et al.'s ResNet-18 defaults. The optimiser settings are our
choice, not the paper's (Kagiyama et al. do not publish theirs): the training loop uses AdamW,
so instead of ResNet's SGD 0.1 we take AdamW at lr 2e-3 (batch 128), weight decay 0.05.
"""
import ml_collections

from cellvit_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.model.name = "resnet18"
  config.model.kwargs = ml_collections.ConfigDict(dict(
      stage_sizes=(2, 2, 2, 2),   # basic blocks per stage: 40x40, 20x20, 10x10, 5x5
      bottleneck=False,
      width=64,                   # stage widths 64, 128, 256, 512
      zero_init_residual=False,   # True: blocks start as identities (Goyal et al. 2017)
      bn_momentum=0.9,            # Flax convention (PyTorch's 0.1)
  ))
  config.optim.lr = 2e-3          # AdamW, our choice for BatchNorm CNNs
  config.optim.weight_decay = 0.05
  return config
