"""Swin-T (Liu et al. 2021, "Swin Transformer: Hierarchical Vision Transformer using Shifted
Windows").

Faithful to Swin-T in everything but the input end:
- patch embedding (conv, kernel = stride = patch) -> LayerNorm; no absolute position embedding;
- four stages of [2, 2, 6, 2] blocks, widths 96, 192, 384, 768, heads 3, 6, 12, 24, MLP ratio 4;
- block: LN -> window MHSA with a learned relative position bias (layers.WindowAttention) ->
  residual; LN -> MLP (layers.Mlp) -> residual; every second block cyclically shifts the map by
  half a window (jnp.roll) and masks attention between tokens that were not neighbours
  (layers.shifted_window_mask); stochastic depth rising linearly from 0 to 0.2 (Swin-T's rate);
- patch merging between stages: concatenate each 2x2 neighbourhood (4C) -> LN -> linear to 2C
  (no bias); an odd map is zero-padded at the bottom/right first, as in the official code;
- final LN -> global average pool -> linear head (zero-initialised); LayerNorm epsilon 1e-5
  (PyTorch's default, which Swin uses).
Dense layers use Flax's default init (LeCun normal) rather than the reference's truncated normal
0.02; the relative position bias tables do use truncated normal 0.02.

40x40 adaptation: patch 2 instead of 4 and window 5 instead of 7. The four stages run at
20x20 -> 10x10 -> 5x5 -> 3x3 (the 5x5 map is padded to 6x6 before merging):
  stage 1: 20x20, 4x4 = 16 windows of 5x5, shifted by 2 in every second block;
  stage 2: 10x10, 2x2 = 4 windows of 5x5, shifted by 2;
  stage 3: 5x5, one window = global attention, no shift;
  stage 4: 3x3, one 3x3 window = global attention, no shift.
This is the official rule: when a stage's map is no larger than the window, the window shrinks
to the map and shifting is switched off (a shift would only wrap the map around itself). We keep
all four stages, so the depth, widths, heads and hence the capacity stay those of Swin-T; the
price is that stage 4 attends over only 9 tokens, and stages 3-4 have no shifted windows (they
need none: their single window already covers the map). A three-stage variant (20 -> 10 -> 5)
is a config change: depths=(2, 2, 6), num_heads=(3, 6, 12).
The relative position tables are sized for the window actually used: (2*5-1)^2 = 81 rows in
stages 1-3, (2*3-1)^2 = 25 in stage 4 (Swin-T/7 has 169 everywhere).

Parameters ('params' collection, num_classes=4, default fields): swin_tiny: 27,504,142
(the official 28,288,354 minus the 4x4 patch embedding, the 169-row bias tables and the
1000-way head, plus a 2x2 embedding, the smaller tables and a 4-way head).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cellvit_jax.models import interface, layers


class SwinBlock(nn.Module):
  """One Swin block on a (B, H, W, C) map; `shift` = 0 for a regular window, window // 2 shifted."""
  num_heads: int
  window: int
  shift: int = 0
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    b, h, w, c = x.shape
    y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm1")(x)
    mask = None
    if self.shift:
      y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
      mask = layers.shifted_window_mask(h, w, self.window, self.shift)
    y = layers.window_partition(y, self.window)
    y = layers.WindowAttention(self.num_heads, self.window, self.dropout, self.dtype,
                               name="attn")(y, mask, train)
    y = layers.window_reverse(y, self.window, h, w)
    if self.shift:
      y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
    x = x + layers.DropPath(self.drop_path)(y, train)
    y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm2")(x)
    y = layers.Mlp(int(c * self.mlp_ratio), dropout=self.dropout, dtype=self.dtype,
                   name="mlp")(y, train)
    return x + layers.DropPath(self.drop_path)(y, train)


class PatchMerging(nn.Module):
  """2x2 neighbourhood concat -> LN -> linear 4C -> 2C; odd maps zero-padded at bottom/right."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    if h % 2 or w % 2:
      x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                        axis=-1)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x)
    return layers.token_dense(nn.Dense(2 * c, use_bias=False, dtype=self.dtype, name="reduction"),
                              x)


class Swin(interface.Model):
  """Swin Transformer for small images; see the module docstring."""
  num_classes: int
  patch_size: int = 2
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Sequence[int] = (3, 6, 12, 24)
  window_size: int = 5
  mlp_ratio: float = 4.0
  drop_path: float = 0.2
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if len(self.depths) != len(self.num_heads):
      raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} "
                       "must have the same length")
    x = x.astype(self.dtype)
    p = self.patch_size
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                name="embed")(x)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="embed_norm")(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    rates = layers.drop_path_rates(self.drop_path, sum(self.depths))
    idx = 0
    for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      if i > 0:
        x = PatchMerging(self.dtype, name=f"merge{i}")(x)
      h, w = x.shape[1:3]
      window, shift = self.window_size, self.window_size // 2
      if min(h, w) <= window:  # the official rule: one window covering the map, no shift
        window, shift = min(h, w), 0
      for j in range(depth):
        x = SwinBlock(heads, window, shift if j % 2 else 0, self.mlp_ratio, rates[idx],
                      self.dropout, self.dtype, name=f"stage{i + 1}_block{j + 1}")(x, train)
        idx += 1
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x)
    x = x.mean(axis=(1, 2))
    head = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                    name="head")
    return head(x).astype(jnp.float32)


class SwinTiny(Swin):
  """Swin-T with patch 2 and window 5 for 40x40 inputs."""
