"""DenseNet-121 on 40x40 patches: 3x3 stride-1 stem, no max-pool (cellvit_jax/models/densenet.py).

The architecture fields are Huang et al.'s DenseNet-121 (BC) defaults. The optimiser settings
are our choice, not the paper's (Kagiyama et al. do not publish theirs): AdamW at lr 2e-3
(batch 128), weight decay 0.05, in place of DenseNet's SGD 0.1.
"""
import ml_collections

from cellvit_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.model.name = "densenet121"
  config.model.kwargs = ml_collections.ConfigDict(dict(
      growth_rate=32,
      block_config=(6, 12, 24, 16),   # dense blocks at 40x40, 20x20, 10x10, 5x5
      num_init_features=64,
      bn_size=4,                      # bottleneck 1x1 conv to 4 * growth_rate
      compression=0.5,
      dropout=0.0,                    # the paper's ImageNet setting (0.2 on un-augmented CIFAR)
      bn_momentum=0.9,
  ))
  config.optim.lr = 2e-3              # AdamW, our choice for BatchNorm CNNs
  config.optim.weight_decay = 0.05
  return config
