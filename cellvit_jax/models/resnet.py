"""ResNet-18 and ResNet-50 (He et al. 2016, "Deep Residual Learning for Image Recognition").

Faithful to the ImageNet ResNets in everything but the input end:
- ResNet-18: basic blocks (two 3x3 convs), stages of [2, 2, 2, 2] blocks;
  ResNet-50: bottleneck blocks (1x1 -> 3x3 -> 1x1, expansion 4), stages of [3, 4, 6, 3].
  Stage widths 64, 128, 256, 512 (x4 at the bottleneck output). Post-activation blocks
  (conv -> BN -> ReLU), projection shortcuts (1x1 conv + BN, "option B") only where the shape
  changes. The bottleneck strides on its 3x3 conv ("ResNet v1.5", as torchvision and the Flax
  ImageNet example do; the paper strided the first 1x1: same parameter count).
- He (fan-out, normal) initialisation of the convolutions, as in the paper. The original has no
  stochastic depth or dropout, so neither has this one.

40x40 adaptation (as the CIFAR ResNets and most small-image work do): the 7x7 stride-2 stem
conv and its 3x3 stride-2 max-pool are replaced by one 3x3 stride-1 conv (64 channels, BN,
ReLU). The four stages then run at 40x40, 20x20, 10x10 and 5x5; global average pool of the
5x5 map, then the linear head (zero-initialised, as CustomViT's).

BatchNorm: momentum 0.9 and epsilon 1e-5 (PyTorch's 0.1/1e-5): runs here are short, and a
slower running average (Flax's default 0.99) would leave eval statistics far from converged.
Batch statistics are over the global batch (the train step jits over a sharded batch).

Parameters (the 'params' collection, num_classes=4, default fields):
  resnet18: 11,170,884    resnet50: 23,508,548
(torchvision's counts minus the 7x7 stem and the 1000-way head, plus the 3x3 stem and a 4-way
head: the architecture is otherwise the same.)
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cellvit_jax.models import interface, layers


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN layers; ReLU after the first and after the residual sum."""
  features: int
  stride: int = 1
  zero_init_residual: bool = False
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  impl: str = "conv"  # layers.ConvBN's: how the convs are computed (CustomViT's stem sets it)
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    cb = dict(bn_momentum=self.bn_momentum, impl=self.impl, dtype=self.dtype)
    y = nn.relu(layers.ConvBN(self.features, 3, self.stride, name="conv1", **cb)(x, train))
    y = layers.ConvBN(self.features, 3, zero_scale=self.zero_init_residual, name="conv2",
                      **cb)(y, train)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = layers.ConvBN(self.features, 1, self.stride, name="shortcut", **cb)(x, train)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """1x1 reduce -> 3x3 (strided) -> 1x1 expand to 4 * features; ReLU after the residual sum."""
  features: int
  stride: int = 1
  zero_init_residual: bool = False
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    cb = dict(bn_momentum=self.bn_momentum, dtype=self.dtype)
    out = self.features * self.expansion
    y = nn.relu(layers.ConvBN(self.features, 1, name="conv1", **cb)(x, train))
    y = nn.relu(layers.ConvBN(self.features, 3, self.stride, name="conv2", **cb)(y, train))
    y = layers.ConvBN(out, 1, zero_scale=self.zero_init_residual, name="conv3", **cb)(y, train)
    if self.stride != 1 or x.shape[-1] != out:
      x = layers.ConvBN(out, 1, self.stride, name="shortcut", **cb)(x, train)
    return nn.relu(x + y)


class ResNet(interface.Model):
  """A ResNet with a 3x3 stride-1 stem and no max-pool; see the module docstring.

  `zero_init_residual=True` starts every block as the identity (BN scale of its last layer at
  zero, Goyal et al. 2017); off by default, as in the paper.
  """
  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  bottleneck: bool = False
  width: int = 64
  zero_init_residual: bool = False
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    x = layers.ConvBN(self.width, 3, bn_momentum=self.bn_momentum, dtype=self.dtype,
                      name="stem")(x, train)
    x = nn.relu(x)
    block_cls = Bottleneck if self.bottleneck else BasicBlock
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 else 1
        x = block_cls(self.width * 2 ** i, stride, self.zero_init_residual, self.bn_momentum,
                      self.dtype, name=f"stage{i + 1}_block{j + 1}")(x, train)
    x = x.mean(axis=(1, 2))
    head = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                    name="head")
    return head(x).astype(jnp.float32)


class ResNet18(ResNet):
  """ResNet-18: basic blocks, [2, 2, 2, 2]."""
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  bottleneck: bool = False


class ResNet50(ResNet):
  """ResNet-50: bottleneck blocks, [3, 4, 6, 3]."""
  stage_sizes: Sequence[int] = (3, 4, 6, 3)
  bottleneck: bool = True
