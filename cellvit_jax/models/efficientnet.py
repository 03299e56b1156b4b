"""EfficientNet-B0 (Tan & Le 2019, "EfficientNet: Rethinking Model Scaling for CNNs").

Faithful to B0 in everything but the input end:
- stem 3x3 conv, 32 channels, BN, SiLU (swish);
- seven stages of MBConv blocks (expand ratio, kernel, first stride, out channels, repeats):
    (1, 3, 1, 16, 1) (6, 3, 2, 24, 2) (6, 5, 2, 40, 2) (6, 3, 2, 80, 3)
    (6, 5, 1, 112, 3) (6, 5, 2, 192, 4) (6, 3, 1, 320, 1);
- MBConv: 1x1 expand -> BN -> SiLU (skipped at ratio 1) -> depthwise kxk -> BN -> SiLU ->
  squeeze-excitation (layers.SqueezeExcite, SiLU, reduced width = 0.25 x the block's *input*
  width) -> 1x1 project -> BN (linear bottleneck); identity skip with drop connect (stochastic
  depth) where stride is 1 and in == out, at rate drop_path * block_index / num_blocks as in the
  reference implementation (0.2 for B0);
- head 1x1 conv to 1280, BN, SiLU, global average pool, dropout 0.2, linear (zero-initialised);
- width/depth multipliers (`width_mult`, `depth_mult`) with the reference rounding (channels to
  multiples of 8, repeats rounded up), so B1..B7 are config changes;
- conv init: variance scaling 2.0, fan-out, normal (the reference's).

40x40 adaptation: the stem is stride 1 instead of 2 (`stem_stride`). All four stride-2 stages
are kept, so the maps are 40 (stem, stage 1) -> 20 (stages 2) -> 10 (stage 3) -> 5 (stages 4, 5)
-> 3 (stages 6, 7 and the head; 5 -> 3 with the symmetric k//2 padding of a 5x5 stride-2 conv).
Total stride 16 instead of 32, so the last map is 3x3 rather than 40/32 ~ 1.

BatchNorm: momentum 0.9 (the reference's TF value is 0.99; short runs here need faster running
averages, see resnet.py), epsilon 1e-3 (the reference's).

Parameters ('params' collection, num_classes=4, default fields): efficientnet_b0: 4,012,672
(torchvision/timm's 5,288,548 minus the 1000-way head plus a 4-way head; the stride change
adds none).
"""
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cellvit_jax.models import interface, layers

BN_EPSILON = 1e-3  # the reference's (TF) BatchNorm epsilon

# (expand ratio, kernel, stride of the first block, output channels, repeats), B0.
B0_STAGES = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


def round_filters(channels: int, width_mult: float, divisor: int = 8) -> int:
  """The reference's channel rounding: scale, round to a multiple of `divisor`, never lose >10%."""
  scaled = channels * width_mult
  new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if new < 0.9 * scaled:
    new += divisor
  return int(new)


def round_repeats(repeats: int, depth_mult: float) -> int:
  return int(math.ceil(depth_mult * repeats))


class MBConv(nn.Module):
  """Mobile inverted bottleneck with squeeze-excitation (MnasNet / EfficientNet)."""
  features: int
  expand_ratio: int
  kernel: int
  stride: int
  se_ratio: float = 0.25
  drop_path: float = 0.0
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    cb = dict(bn_momentum=self.bn_momentum, dtype=self.dtype)
    in_ch = x.shape[-1]
    hidden = in_ch * self.expand_ratio
    y = x
    if self.expand_ratio != 1:
      y = nn.silu(layers.ConvBN(hidden, 1, name="expand", epsilon=BN_EPSILON, **cb)(y, train))
    y = nn.silu(layers.ConvBN(hidden, self.kernel, self.stride, groups=hidden, name="depthwise",
                               epsilon=BN_EPSILON, **cb)(y, train))
    if self.se_ratio > 0:
      y = layers.SqueezeExcite(max(1, int(in_ch * self.se_ratio)), nn.silu, self.dtype,
                               name="se")(y)
    # Linear bottleneck: no activation after the projection.
    y = layers.ConvBN(self.features, 1, name="project", epsilon=BN_EPSILON, **cb)(y, train)
    if self.stride == 1 and in_ch == self.features:
      y = x + layers.DropPath(self.drop_path)(y, train)
    return y


class EfficientNet(interface.Model):
  """EfficientNet with a configurable stem stride; see the module docstring."""
  num_classes: int
  width_mult: float = 1.0
  depth_mult: float = 1.0
  stem_stride: int = 1
  se_ratio: float = 0.25
  dropout: float = 0.2
  drop_path: float = 0.2
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    cb = dict(bn_momentum=self.bn_momentum, dtype=self.dtype)
    x = x.astype(self.dtype)
    x = nn.silu(layers.ConvBN(round_filters(32, self.width_mult), 3, self.stem_stride, name="stem",
                              epsilon=BN_EPSILON, **cb)(x, train))
    stages = [(e, k, s, round_filters(c, self.width_mult), round_repeats(r, self.depth_mult))
              for e, k, s, c, r in B0_STAGES]
    num_blocks = sum(r for *_, r in stages)
    idx = 0
    for i, (expand, kernel, stride, features, repeats) in enumerate(stages):
      for j in range(repeats):
        x = MBConv(features, expand, kernel, stride if j == 0 else 1, self.se_ratio,
                   self.drop_path * idx / num_blocks, name=f"stage{i + 1}_block{j + 1}",
                   **cb)(x, train)
        idx += 1
    x = nn.silu(layers.ConvBN(round_filters(1280, self.width_mult), 1, name="head_conv",
                              epsilon=BN_EPSILON, **cb)(x, train))
    x = x.mean(axis=(1, 2))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    head = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                    name="head")
    return head(x).astype(jnp.float32)


class EfficientNetB0(EfficientNet):
  """EfficientNet-B0 (width 1.0, depth 1.0, dropout 0.2, drop connect 0.2), stride-1 stem."""
