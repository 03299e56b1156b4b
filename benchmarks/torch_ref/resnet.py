"""PyTorch ResNet-18/-50 with the 40x40 stem of cellvit_jax/models/resnet.py.

3x3 stride-1 stem conv + BN + ReLU, no max-pool; basic or bottleneck (stride on the 3x3)
blocks; 1x1 conv + BN projection shortcuts only where the shape changes; BN momentum 0.1 =
Flax's 0.9, eps 1e-5; global average pool; linear head.
"""
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F


class ConvBN(nn.Module):
  def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
    self.bn = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
    nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")

  def forward(self, x):
    return self.bn(self.conv(x))


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin: int, features: int, stride: int):
    super().__init__()
    self.conv1 = ConvBN(cin, features, 3, stride)
    self.conv2 = ConvBN(features, features, 3)
    self.shortcut = ConvBN(cin, features, 1, stride) if stride != 1 or cin != features else None

  def forward(self, x):
    y = self.conv2(F.relu(self.conv1(x)))
    return F.relu((x if self.shortcut is None else self.shortcut(x)) + y)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin: int, features: int, stride: int):
    super().__init__()
    out = features * 4
    self.conv1 = ConvBN(cin, features, 1)
    self.conv2 = ConvBN(features, features, 3, stride)
    self.conv3 = ConvBN(features, out, 1)
    self.shortcut = ConvBN(cin, out, 1, stride) if stride != 1 or cin != out else None

  def forward(self, x):
    y = self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))
    return F.relu((x if self.shortcut is None else self.shortcut(x)) + y)


class ResNet(nn.Module):
  """Takes the Flax ResNet's config fields; bn_momentum is Flax's (PyTorch's is 1 - it)."""

  def __init__(self, num_classes: int, stage_sizes=(2, 2, 2, 2), bottleneck: bool = False,
               width: int = 64, zero_init_residual: bool = False, bn_momentum: float = 0.9):
    super().__init__()
    block_cls = Bottleneck if bottleneck else BasicBlock
    self.stem = ConvBN(3, width, 3)
    blocks, cin = [], width
    for i, n in enumerate(stage_sizes):
      for j in range(n):
        blocks.append(block_cls(cin, width * 2 ** i, 2 if i > 0 and j == 0 else 1))
        cin = width * 2 ** i * block_cls.expansion
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(cin, num_classes)
    nn.init.zeros_(self.head.weight)
    nn.init.zeros_(self.head.bias)
    for m in self.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.momentum = 1.0 - bn_momentum
    if zero_init_residual:  # the last BN scale of each block at zero, as the Flax module does
      for block in blocks:
        nn.init.zeros_((block.conv3 if bottleneck else block.conv2).bn.weight)
    self.stage_sizes = tuple(stage_sizes)

  def forward(self, x):
    x = self.blocks(F.relu(self.stem(x)))
    return self.head(x.mean(dim=(2, 3)))


def ResNet18(num_classes: int, **kwargs):
  return ResNet(num_classes, **{"stage_sizes": (2, 2, 2, 2), "bottleneck": False, **kwargs})


def ResNet50(num_classes: int, **kwargs):
  return ResNet(num_classes, **{"stage_sizes": (3, 4, 6, 3), "bottleneck": True, **kwargs})


def _t(a):
  return torch.from_numpy(np.array(a, dtype=np.float32))


def _convbn(m: ConvBN, p, s):
  m.conv.weight.data.copy_(_t(p["conv"]["kernel"]).permute(3, 2, 0, 1))
  m.bn.weight.data.copy_(_t(p["bn"]["scale"]))
  m.bn.bias.data.copy_(_t(p["bn"]["bias"]))
  m.bn.running_mean.copy_(_t(s["bn"]["mean"]))
  m.bn.running_var.copy_(_t(s["bn"]["var"]))


def load_block(block, p, s):
  """A basic or bottleneck block from its Flax params / batch_stats subtrees."""
  for conv in ("conv1", "conv2", "conv3", "shortcut"):
    if getattr(block, conv, None) is not None:
      _convbn(getattr(block, conv), p[conv], s[conv])


def load_flax(model: ResNet, variables):
  p, s = variables["params"], variables["batch_stats"]
  _convbn(model.stem, p["stem"], s["stem"])
  names = [f"stage{i + 1}_block{j + 1}" for i, n in enumerate(model.stage_sizes) for j in range(n)]
  for name, block in zip(names, model.blocks):
    load_block(block, p[name], s[name])
  model.head.weight.data.copy_(_t(p["head"]["kernel"]).T)
  model.head.bias.data.copy_(_t(p["head"]["bias"]))
