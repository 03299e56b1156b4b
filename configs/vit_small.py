"""ViT-S/4 on 40x40 patches: 10x10 tokens (cellvit_jax/models/vit.py).

The architecture fields are ViT-S (DeiT-S) defaults (width 384, depth 12, 6 heads, drop path
0.1), except the patch size. The optimiser settings are our choice, not the paper's (Kagiyama
et al. do not publish theirs): AdamW at lr 5e-4 (batch 128), weight decay 0.05, two warmup
epochs; transformers trained from scratch like a lower rate and a longer warmup than CNNs.
"""
import ml_collections

from cellvit_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.model.name = "vit_small"
  config.model.kwargs = ml_collections.ConfigDict(dict(
      patch_size=4,       # 16 in the original; 40x40 -> 10x10 tokens
      dim=384,
      depth=12,
      num_heads=6,
      mlp_ratio=4.0,
      drop_path=0.1,
      dropout=0.0,
  ))
  config.optim.lr = 5e-4  # AdamW, our choice
  config.optim.weight_decay = 0.05
  config.optim.warmup_epochs = 2.0
  return config
