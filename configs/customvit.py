"""CustomViT on 40x40 patches: our reconstruction of the paper's small-patch ViT.

Every architecture switch below is an ablation knob, e.g.
  --config.model.kwargs.spt=True --config.model.kwargs.pool=gap
"""
import ml_collections

from cellvit_jax import default_config as default


def get_config():
  config = default.get_config()
  config.model.name = "customvit"
  config.model.kwargs = ml_collections.ConfigDict(dict(
      patch_size=4,          # 40x40 -> 10x10 tokens
      dim=96,                # small on purpose: the paper reports CustomViT as far cheaper
      depth=4,               # than the FMs; width 192 / depth 6 is a heavier variant
      num_heads=3,
      mlp_ratio=2.0,
      tokenizer="patch",     # 'patch' | 'conv'
      spt=False,             # shifted patch tokenization (Lee et al. 2021)
      lsa=False,             # locality self-attention (Lee et al. 2021)
      pos_emb="learned",     # 'learned' | 'sincos'
      pool="cls",            # 'cls' | 'gap'
      drop_path=0.1,
      dropout=0.0,
  ))
  return config
