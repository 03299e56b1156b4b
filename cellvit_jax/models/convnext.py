"""ConvNeXt-T (Liu et al. 2022, "A ConvNet for the 2020s").

Faithful to ConvNeXt-T in everything but the input end:
- four stages of [3, 3, 9, 3] blocks, widths [96, 192, 384, 768];
- block: 7x7 depthwise conv -> LayerNorm -> Linear 4C -> GELU -> Linear C (layers.Mlp) ->
  layer scale (per-channel gamma, initialised at 1e-6) -> stochastic depth -> residual add;
- stem: patchify conv (kernel = stride) -> LayerNorm; downsampling between stages:
  LayerNorm -> 2x2 stride-2 conv; head: global average pool -> LayerNorm -> linear
  (zero-initialised here); LayerNorm epsilon 1e-6; no BatchNorm anywhere;
- stochastic depth rising linearly from 0 to 0.1 over the 18 blocks (ConvNeXt-T on ImNet-1k);
- convs initialised with a truncated normal of std 0.02, biases at zero (the reference's).

40x40 adaptation: the 4x4 stride-4 patchify stem (224 -> 56) becomes 2x2 stride 2
(`stem_patch`), so the stages run at 20x20, 10x10, 5x5 and 3x3. The last downsampling meets an
odd 5x5 map: its 2x2 stride-2 conv uses SAME padding (one zero row/column at the bottom/right,
as Swin's patch merging pads odd maps) so no pixel is dropped; 5 -> 3 instead of 5 -> 2. On
even maps SAME is the same as the reference's VALID. The 7x7 depthwise kernels are kept; on the
5x5 and 3x3 maps they see the whole map (zero-padded).

Parameters ('params' collection, num_classes=4, default fields): convnext_tiny: 27,819,748
(the reference's 28,589,128 minus the 4x4 stem and the 1000-way head, plus a 2x2 stem and a
4-way head).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cellvit_jax.models import interface, layers

_init = nn.initializers.truncated_normal(0.02)


class ConvNeXtBlock(nn.Module):
  drop_path: float = 0.0
  layer_scale_init: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    c = x.shape[-1]
    y = nn.Conv(c, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=c, kernel_init=_init,
                dtype=self.dtype, name="dwconv")(x)
    y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(y)
    y = layers.Mlp(4 * c, dtype=self.dtype, name="mlp")(y, train)
    if self.layer_scale_init > 0:
      gamma = self.param("layer_scale", nn.initializers.constant(self.layer_scale_init), (c,))
      y = y * gamma.astype(self.dtype)
    return x + layers.DropPath(self.drop_path)(y, train)


class ConvNeXt(interface.Model):
  """ConvNeXt with a configurable patchify stem; see the module docstring."""
  num_classes: int
  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  stem_patch: int = 2
  drop_path: float = 0.1
  layer_scale_init: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if len(self.depths) != len(self.dims):
      raise ValueError(f"depths {self.depths} and dims {self.dims} must have the same length")
    x = x.astype(self.dtype)
    p = self.stem_patch
    x = nn.Conv(self.dims[0], (p, p), strides=(p, p), padding="VALID", kernel_init=_init,
                dtype=self.dtype, name="stem")(x)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="stem_norm")(x)
    rates = layers.drop_path_rates(self.drop_path, sum(self.depths))
    idx = 0
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      if i > 0:
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name=f"downsample{i}_norm")(x)
        x = nn.Conv(dim, (2, 2), strides=(2, 2), padding="SAME", kernel_init=_init,
                    dtype=self.dtype, name=f"downsample{i}")(x)
      for j in range(depth):
        x = ConvNeXtBlock(rates[idx], self.layer_scale_init, self.dtype,
                          name=f"stage{i + 1}_block{j + 1}")(x, train)
        idx += 1
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm")(x.mean(axis=(1, 2)))
    head = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                    name="head")
    return head(x).astype(jnp.float32)


class ConvNeXtTiny(ConvNeXt):
  """ConvNeXt-T: depths [3, 3, 9, 3], widths [96, 192, 384, 768], drop path 0.1."""
