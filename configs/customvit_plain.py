"""CustomViT as first reconstructed (before the design study of docs/customvit.md): a plain
ViT on 4x4 patches with a class token. Kept as a named config so the ablation shows what
each design change gave:

  python -m cellvit_jax.main --config=configs/customvit_plain.py --workdir=runs/customvit_plain
"""
import ml_collections

from cellvit_jax.config import defaults as default


def get_config():
  config = default.get_config()
  config.model.name = "customvit"
  config.model.kwargs = ml_collections.ConfigDict(dict(
      patch_size=4, dim=96, depth=4, num_heads=3, mlp_ratio=2.0, tokenizer="patch",
      stem_width=0, spt=False, lsa=False, pos_emb="learned", pool="cls", drop_path=0.1,
      dropout=0.0))
  return config
