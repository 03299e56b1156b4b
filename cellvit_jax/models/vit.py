"""ViT-S (Dosovitskiy et al. 2021; the "Small" size of DeiT, Touvron et al. 2021).

Faithful to ViT-S in everything but the input end:
- width 384, depth 12, 6 heads, MLP ratio 4; pre-norm encoder blocks (layers.EncoderBlock:
  LN -> MHSA -> residual, LN -> MLP(GELU) -> residual), LayerNorm epsilon 1e-6;
- non-overlapping patch embedding (a conv of kernel = stride = patch), learned 1-D position
  embedding (normal, std 0.02), a class token, final LayerNorm, class-token pooling, linear
  head (zero-initialised, as big_vision and CustomViT);
- stochastic depth rising linearly from 0 to 0.1 over the blocks (DeiT-S's rate); dropout 0.

40x40 adaptation: patch size 4 instead of 16, so a 40x40 patch becomes 10x10 = 100 tokens
(+1 class token), about half of ViT-S/16's 196 at 224x224. The position embedding is sized
for that grid (101 x 384). Nothing else changes.

Parameters ('params' collection, num_classes=4, default fields): vit_small: 21,353,860
(ViT-S/16's 22,050,664 minus its 16x16 patch embedding, 197-token position embedding and
1000-way head, plus a 4x4 patch embedding, 101 positions and a 4-way head).
"""
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cellvit_jax.models import interface, layers


class ViT(interface.Model):
  """Plain ViT with class-token pooling; see the module docstring."""
  num_classes: int
  patch_size: int = 4
  dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  drop_path: float = 0.1
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    b, h, w, _ = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"image size {h}x{w} is not divisible by patch_size={p}")
    x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                name="embed")(x)
    x = x.reshape(b, -1, self.dim)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, self.dim))
    x = jnp.concatenate([jnp.tile(cls.astype(self.dtype), (b, 1, 1)), x], axis=1)
    pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], self.dim))
    x = x + pos.astype(self.dtype)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    for i, rate in enumerate(layers.drop_path_rates(self.drop_path, self.depth)):
      x = layers.EncoderBlock(self.num_heads, self.mlp_ratio, rate, self.dropout, dtype=self.dtype,
                              name=f"block{i}")(x, train)
    x = nn.LayerNorm(dtype=self.dtype, name="norm")(x)[:, 0]
    head = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                    name="head")
    return head(x).astype(jnp.float32)


class ViTSmall(ViT):
  """ViT-S/4: width 384, depth 12, 6 heads, patch 4 (10x10 tokens on 40x40)."""
