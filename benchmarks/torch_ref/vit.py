"""PyTorch CustomViT (patch or convstem tokenizer, learned positions, class token) and ViT-S.

Mirrors cellvit_jax/models/customvit.py and vit.py: conv patch embedding, pre-norm blocks with
a fused qkv Linear (the (3, heads, head_dim) split of layers.SelfAttention), tanh-GELU MLP
(flax nn.gelu's default), LayerNorm eps 1e-6 (Flax's), stochastic depth per sample.
CustomViT adds positions before the class token is prepended, ViT-S after; both are kept.
CustomViT's 'convstem' tokenizer (its default) and 'patch' (configs/customvit_plain.py) are
ported, without SPT/LSA and with pool 'cls': the benchmark runs the shipped configs.
"""
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from benchmarks.torch_ref.resnet import BasicBlock, ConvBN, _convbn, load_block

_EPS = 1e-6


class DropPath(nn.Module):
  def __init__(self, rate: float):
    super().__init__()
    self.rate = rate

  def forward(self, x):
    if not self.training or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    mask = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) < keep
    return torch.where(mask, x / keep, torch.zeros_like(x))


class Attention(nn.Module):
  def __init__(self, dim: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = nn.Linear(dim, 3 * dim)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, d = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # the fused kernel torch users get
    return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
  def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float):
    super().__init__()
    hidden = int(dim * mlp_ratio)
    self.norm1 = nn.LayerNorm(dim, eps=_EPS)
    self.attn = Attention(dim, num_heads)
    self.norm2 = nn.LayerNorm(dim, eps=_EPS)
    self.fc1 = nn.Linear(dim, hidden)
    self.fc2 = nn.Linear(hidden, dim)
    self.drop_path = DropPath(drop_path)

  def forward(self, x):
    x = x + self.drop_path(self.attn(self.norm1(x)))
    y = self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate="tanh"))
    return x + self.drop_path(y)


class ViT(nn.Module):
  """Input NCHW float; `pos_before_cls`: CustomViT's order (positions only on patch tokens)."""

  def __init__(self, num_classes: int, patch_size: int, dim: int, depth: int, num_heads: int,
               mlp_ratio: float, drop_path: float, pos_before_cls: bool, image_size: int = 40,
               stem_width: int = 0, stem_full_res: bool = True, stem_blocks: int = 0,
               stem_blocks_from: int = 0):
    super().__init__()
    tokens = (image_size // patch_size) ** 2
    self.pos_before_cls = pos_before_cls
    # stem_width > 0: CustomViT's 'convstem' (3x3 conv + BN + ReLU at full resolution, then
    # log2(patch) stride-2 stages doubling the width up to dim, then a 1x1 projection;
    # stem_full_res=False drops the stride-1 conv, as the Flax switch does; stem_blocks basic
    # blocks follow each conv from index stem_blocks_from on). The stem is a flat list:
    # ConvBN + ReLU, or a whole block.
    self.stem = nn.ModuleList()
    if stem_width:
      cin, width = 3, stem_width
      stages = patch_size.bit_length() - 1
      strides = ([1] if stem_full_res else []) + [2] * stages
      for i, stride in enumerate(strides):
        self.stem.append(ConvBN(cin, width, 3, stride=stride))
        if i >= stem_blocks_from:
          self.stem.extend(BasicBlock(width, width, 1) for _ in range(stem_blocks))
        cin = width
        width = min(width * 2, dim) if i < len(strides) - 1 else width
      self.embed = nn.Conv2d(cin, dim, 1)
    else:
      self.embed = nn.Conv2d(3, dim, patch_size, stride=patch_size)
    self.pos_embedding = nn.Parameter(
        torch.randn(1, tokens + (0 if pos_before_cls else 1), dim) * 0.02)
    self.cls = nn.Parameter(torch.zeros(1, 1, dim))
    rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]
    self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, r) for r in rates)
    self.norm = nn.LayerNorm(dim, eps=_EPS)
    self.head = nn.Linear(dim, num_classes)
    nn.init.zeros_(self.head.weight)
    nn.init.zeros_(self.head.bias)

  def forward(self, x):
    for layer in self.stem:
      x = layer(x) if isinstance(layer, BasicBlock) else F.relu(layer(x))
    x = self.embed(x).flatten(2).transpose(1, 2)  # (B, H*W, D), row-major tokens as in Flax
    cls = self.cls.expand(x.shape[0], -1, -1)
    if self.pos_before_cls:
      x = torch.cat([cls, x + self.pos_embedding], dim=1)
    else:
      x = torch.cat([cls, x], dim=1) + self.pos_embedding
    for block in self.blocks:
      x = block(x)
    return self.head(self.norm(x)[:, 0])


def CustomViT(num_classes: int, patch_size=8, dim=96, depth=4, num_heads=3, mlp_ratio=2.0,
              tokenizer="convstem", stem_width=0, stem_full_res=True, stem_blocks=0,
              stem_blocks_from=0, spt=False, lsa=False,
              pos_emb="learned", pool="cls", drop_path=0.1, dropout=0.0, stem_impl="auto"):
  del stem_impl  # how JAX computes the stem convs (same maths); torch uses its own conv2d
  if (tokenizer not in ("patch", "convstem")
      or (spt, lsa, pos_emb, pool, dropout) != (False, False, "learned", "cls", 0.0)):
    raise ValueError("the PyTorch CustomViT ports the 'patch' and 'convstem' tokenizers with "
                     "learned positions and pool 'cls', no SPT/LSA/dropout")
  stem = (stem_width or max(dim // 4, 8)) if tokenizer == "convstem" else 0
  return ViT(num_classes, patch_size, dim, depth, num_heads, mlp_ratio, drop_path,
             pos_before_cls=True, stem_width=stem, stem_full_res=stem_full_res,
             stem_blocks=stem_blocks, stem_blocks_from=stem_blocks_from)


def ViTSmall(num_classes: int, patch_size=4, dim=384, depth=12, num_heads=6, mlp_ratio=4.0,
             drop_path=0.1, dropout=0.0):
  if dropout:
    raise ValueError("the PyTorch ViT-S port has no dropout")
  return ViT(num_classes, patch_size, dim, depth, num_heads, mlp_ratio, drop_path,
             pos_before_cls=False)


def _t(a):
  return torch.from_numpy(np.array(a, dtype=np.float32))


def _dense(layer: nn.Linear, p):
  layer.weight.data.copy_(_t(p["kernel"]).T)
  layer.bias.data.copy_(_t(p["bias"]))


def _norm(layer: nn.LayerNorm, p):
  layer.weight.data.copy_(_t(p["scale"]))
  layer.bias.data.copy_(_t(p["bias"]))


def load_flax(model: ViT, variables):
  p = variables["params"]
  s = variables.get("batch_stats", {})
  i = j = -1  # the stem in build order: stem0, stem0_block0, ..., stem1, stem1_block0, ...
  for layer in model.stem:
    if isinstance(layer, BasicBlock):
      j += 1
      load_block(layer, p[f"stem{i}_block{j}"], s[f"stem{i}_block{j}"])
    else:
      i, j = i + 1, -1
      _convbn(layer, p[f"stem{i}"], s[f"stem{i}"])
  model.embed.weight.data.copy_(_t(p["embed"]["kernel"]).permute(3, 2, 0, 1))
  model.embed.bias.data.copy_(_t(p["embed"]["bias"]))
  model.pos_embedding.data.copy_(_t(p["pos_embedding"]))
  model.cls.data.copy_(_t(p["cls"]))
  for i, block in enumerate(model.blocks):
    b = p[f"block{i}"]
    _norm(block.norm1, b["norm1"])
    _norm(block.norm2, b["norm2"])
    _dense(block.attn.qkv, b["attn"]["qkv"])
    _dense(block.attn.proj, b["attn"]["proj"])
    _dense(block.fc1, b["mlp"]["fc1"])
    _dense(block.fc2, b["mlp"]["fc2"])
  _norm(model.norm, p["norm"])
  _dense(model.head, p["head"])
