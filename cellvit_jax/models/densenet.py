"""DenseNet-121 (Huang et al. 2017, "Densely Connected Convolutional Networks"), DenseNet-BC.

Faithful to the ImageNet DenseNet-121 in everything but the input end:
- four dense blocks of [6, 12, 24, 16] layers, growth rate k = 32;
- each layer is pre-activation BN -> ReLU -> 1x1 conv (4k channels, the "B" bottleneck) ->
  BN -> ReLU -> 3x3 conv (k channels), its output concatenated onto the block's features;
- transitions between blocks: BN -> ReLU -> 1x1 conv halving the channels (compression 0.5,
  the "C") -> 2x2 average pool, stride 2;
- after the last block: BN -> ReLU -> global average pool -> linear head (zero-initialised);
- He (fan-in, normal) initialisation of the convolutions; dropout after each 3x3 conv is a
  field (`dropout`, 0 as for the ImageNet models; the paper used 0.2 on un-augmented CIFAR).

40x40 adaptation (as the CIFAR DenseNets do): the 7x7 stride-2 stem conv and its 3x3 stride-2
max-pool are replaced by one 3x3 stride-1 conv with 2k = 64 channels (kept: its BN and ReLU).
The blocks then run at 40x40, 20x20, 10x10 and 5x5 (the three transitions halve the size).

BatchNorm: momentum 0.9 and epsilon 1e-5 (PyTorch's 0.1/1e-5), for the reason given in
resnet.py (short runs).

Parameters ('params' collection, num_classes=4, default fields): densenet121: 6,950,276
(torchvision's 7,978,856 minus the 7x7 stem and 1000-way head, plus the 3x3 stem and a 4-way head).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from cellvit_jax.models import interface

_conv_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


class _BNReLUConv(nn.Module):
  """Pre-activation unit: BN -> ReLU -> conv (no bias)."""
  features: int
  kernel: int
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
                     dtype=self.dtype, name="bn")(x)
    x = nn.relu(x)
    p = self.kernel // 2
    return nn.Conv(self.features, (self.kernel, self.kernel), padding=((p, p), (p, p)),
                   use_bias=False, kernel_init=_conv_init, dtype=self.dtype, name="conv")(x)


class DenseLayer(nn.Module):
  """BN-ReLU-Conv1x1(bn_size * k) -> BN-ReLU-Conv3x3(k) -> dropout; returns the k new channels."""
  growth_rate: int
  bn_size: int = 4
  dropout: float = 0.0
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    y = _BNReLUConv(self.bn_size * self.growth_rate, 1, self.bn_momentum, self.dtype,
                    name="unit1")(x, train)
    y = _BNReLUConv(self.growth_rate, 3, self.bn_momentum, self.dtype, name="unit2")(y, train)
    return nn.Dropout(self.dropout, deterministic=not train)(y)


class DenseNet(interface.Model):
  """DenseNet-BC with a 3x3 stride-1 stem and no max-pool; see the module docstring."""
  num_classes: int
  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int = 4
  compression: float = 0.5
  dropout: float = 0.0
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    bn = dict(use_running_average=not train, momentum=self.bn_momentum, epsilon=1e-5,
              dtype=self.dtype)
    x = x.astype(self.dtype)
    x = nn.Conv(self.num_init_features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False,
                kernel_init=_conv_init, dtype=self.dtype, name="stem")(x)
    x = nn.relu(nn.BatchNorm(name="stem_bn", **bn)(x))
    for i, num_layers in enumerate(self.block_config):
      for j in range(num_layers):
        new = DenseLayer(self.growth_rate, self.bn_size, self.dropout, self.bn_momentum, self.dtype,
                         name=f"block{i + 1}_layer{j + 1}")(x, train)
        x = jnp.concatenate([x, new], axis=-1)
      if i != len(self.block_config) - 1:
        features = int(x.shape[-1] * self.compression)
        x = _BNReLUConv(features, 1, self.bn_momentum, self.dtype,
                        name=f"transition{i + 1}")(x, train)
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.BatchNorm(name="final_bn", **bn)(x))
    x = x.mean(axis=(1, 2))
    head = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                    name="head")
    return head(x).astype(jnp.float32)


class DenseNet121(DenseNet):
  """DenseNet-121: k = 32, blocks [6, 12, 24, 16], 64 stem channels."""
