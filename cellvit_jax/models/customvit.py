"""CustomViT: a small Vision Transformer designed for 40x40 single-cell patches.

The paper (Kagiyama et al. 2026) names CustomViT but its design is not public; this is
our reconstruction. Every design choice is a field, so each is an ablation switch in
`configs/customvit.py`:

- tokenizer: how pixels become the token grid (p=8 -> 5x5 tokens, p=4 -> 10x10, for all):
  'patch' (non-overlapping p x p patches, linear), 'conv' (a 3x3 conv then an overlapping
  (p+1)x(p+1) conv of stride p), 'convstem' (Xiao et al. 2021, "Early convolutions help
  transformers see better": 3x3 conv + BatchNorm + ReLU at full resolution, then log2(p)
  stride-2 3x3 conv + BN + ReLU stages doubling the width, then a 1x1 projection), or
  'cct' (Hassani et al. 2021, Compact Convolutional Transformers: log2(p) stages of
  3x3 conv + ReLU + 3x3 max-pool of stride 2, no normalisation);
- stem_width: channels of the first conv of 'convstem' / 'cct' (0 -> dim // 4);
- stem_blocks: residual blocks (ResNet's basic block: two 3x3 conv + BN, identity shortcut)
  after each 'convstem' conv, at that conv's resolution and width: the tokenizer becomes a
  small ResNet, as in the hybrid ViT (Dosovitskiy et al. 2021, "R50+ViT"); 0 is the plain stem;
- stem_blocks_from: index of the first stem conv that gets the blocks (0: every conv; with
  stem_full_res at patch 8 the convs run at 40, 20, 10 and 5 px, so 2 puts blocks at the
  10x10 and 5x5 stages only: the same FLOPs per block, far fewer bytes moved per FLOP on CPU);
- stem_full_res: 'convstem' starts with a stride-1 conv at full resolution (ours) or, False,
  with the stride-2 convs alone (Xiao et al.'s layout; cheaper on CPU);
- stem_impl: how the 'convstem' convolutions are computed, not what they compute: 'conv'
  (XLA's convolution), 'matmul' (patches @ kernel), 'mixed' (XLA's convolution forward,
  stride-2 gradients in forms XLA:CPU runs well) or 'auto' (matmul on CPU, conv on GPU / TPU);
  models/conv_impl.py. Same parameters, equal outputs and gradients up to float rounding;
- spt: Shifted Patch Tokenization (Lee et al. 2021): the image and its four diagonal
  half-patch shifts are stacked on channels before patchifying, widening each token's
  receptive field;
- lsa: Locality Self-Attention (Lee et al. 2021): learnable softmax temperature and a
  masked diagonal;
- pos_emb: 'learned', 'sincos' (fixed 2-D) or 'relative' (no absolute embedding; a learned
  bias per head and 2-D token offset in every block's attention, BEiT / Swin);
- pool: 'cls' (class token), 'gap' (mean over tokens) or 'seq' (CCT's sequence pooling:
  a learned softmax weighting of the tokens);
- drop_path: maximum stochastic-depth rate, linearly increasing over blocks.

Parameters ('params' collection, num_classes=4, default fields): customvit: 447,484
(tokenizer='convstem', patch_size=8; 371,548 with patch_size=4; the first design,
configs/customvit_plain.py: 314,116). The design study that chose the defaults is
docs/customvit.md.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cellvit_jax.models import interface, layers
from cellvit_jax.models.resnet import BasicBlock


def shifted_patch_stack(x, shift: int):
  """Lee et al.'s SPT input: x and its 4 diagonal shifts by `shift` px, zero-filled, on channels."""
  h, w = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
  views = [x]
  for dy, dx in ((-1, -1), (-1, 1), (1, -1), (1, 1)):
    y0, x0 = shift + dy * shift, shift + dx * shift
    views.append(padded[:, y0:y0 + h, x0:x0 + w])
  return jnp.concatenate(views, axis=-1)


class CustomViT(interface.Model):
  num_classes: int
  patch_size: int = 8
  dim: int = 96
  depth: int = 4
  num_heads: int = 3
  mlp_ratio: float = 2.0
  tokenizer: str = "convstem"
  spt: bool = False
  lsa: bool = False
  stem_width: int = 0
  stem_blocks: int = 0
  stem_blocks_from: int = 0
  stem_full_res: bool = True
  stem_impl: str = "auto"
  pos_emb: str = "learned"
  pool: str = "cls"
  drop_path: float = 0.1
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.astype(self.dtype)
    b, h, w, _ = x.shape
    p = self.patch_size
    if h % p or w % p:
      raise ValueError(f"image size {h}x{w} is not divisible by patch_size={p}; "
                       f"pick a divisor of {h}")
    if self.stem_blocks < 0 or (self.stem_blocks and self.tokenizer != "convstem"):
      raise ValueError(f"stem_blocks={self.stem_blocks} needs tokenizer='convstem' and a "
                       "count >= 0; use stem_blocks=0 with other tokenizers")
    if self.stem_blocks_from and (self.stem_blocks_from < 0 or not self.stem_blocks):
      raise ValueError(f"stem_blocks_from={self.stem_blocks_from} needs stem_blocks >= 1 and "
                       "a stem conv index >= 0; leave it 0 without stem blocks")
    if self.spt:
      x = shifted_patch_stack(x, max(p // 2, 1))
    if self.tokenizer == "patch":
      if self.spt:  # SPT: LayerNorm over the flattened stacked patch, then a linear projection.
        x = x.reshape(b, h // p, p, w // p, p, x.shape[-1]).transpose(0, 1, 3, 2, 4, 5)
        x = x.reshape(b, h // p, w // p, -1)
        x = nn.LayerNorm(dtype=self.dtype, name="spt_norm")(x)
        x = nn.Dense(self.dim, dtype=self.dtype, name="embed")(x)
      else:
        x = nn.Conv(self.dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    name="embed")(x)
    elif self.tokenizer == "conv":
      x = nn.Conv(self.dim // 2, (3, 3), padding="SAME", dtype=self.dtype, name="stem")(x)
      x = nn.gelu(nn.LayerNorm(dtype=self.dtype, name="stem_norm")(x))
      x = nn.Conv(self.dim, (p + 1, p + 1), strides=(p, p), padding=((p // 2, p // 2),) * 2,
                  dtype=self.dtype, name="embed")(x)
    elif self.tokenizer in ("convstem", "cct"):
      x = self._conv_tokenizer(x, train)
    else:
      raise ValueError(f"unknown tokenizer {self.tokenizer!r}; choose 'patch', 'conv', "
                       "'convstem' or 'cct'")
    gh, gw = x.shape[1:3]
    x = x.reshape(b, gh * gw, self.dim)

    if self.pos_emb == "learned":
      pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, gh * gw, self.dim))
      x = x + jnp.asarray(pos, self.dtype)
    elif self.pos_emb == "sincos":
      x = x + jnp.asarray(layers.sincos_2d(gh, gw, self.dim)[None], self.dtype)
    elif self.pos_emb != "relative":
      raise ValueError(f"unknown pos_emb {self.pos_emb!r}; choose 'learned', 'sincos' or "
                       "'relative'")

    if self.pool == "cls":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, self.dim))
      x = jnp.concatenate([jnp.tile(cls.astype(self.dtype), (b, 1, 1)), x], axis=1)
    elif self.pool not in ("gap", "seq"):
      raise ValueError(f"unknown pool {self.pool!r}; choose 'cls', 'gap' or 'seq'")
    x = nn.Dropout(self.dropout, deterministic=not train)(x)

    for i, rate in enumerate(layers.drop_path_rates(self.drop_path, self.depth)):
      bias = None
      if self.pos_emb == "relative":
        bias = layers.RelativePositionBias(gh, gw, self.num_heads, cls_token=self.pool == "cls",
                                           name=f"block{i}_rel_pos")()
      x = layers.EncoderBlock(self.num_heads, self.mlp_ratio, rate, self.dropout, self.lsa,
                              self.dtype, name=f"block{i}")(x, train, bias)
    x = nn.LayerNorm(dtype=self.dtype, name="norm")(x)
    if self.pool == "cls":
      x = x[:, 0]
    elif self.pool == "gap":
      x = x.mean(axis=1)
    else:  # CCT's sequence pooling: one learned score per token, softmax over tokens.
      scores = nn.Dense(1, dtype=self.dtype, name="seq_pool")(x)
      weights = jax.nn.softmax(scores.astype(jnp.float32), axis=1)
      x = jnp.sum(weights.astype(self.dtype) * x, axis=1)
    head = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                    name="head")
    return head(x).astype(jnp.float32)

  def counted_form(self):
    # The stem's FLOPs as XLA's convolutions count them, whichever form runs here.
    return self.clone(stem_impl="conv")

  def _conv_tokenizer(self, x, train):
    """'convstem' / 'cct': a small CNN that brings 40x40 pixels to the (h/p)x(w/p) token grid."""
    p = self.patch_size
    stages = p.bit_length() - 1
    if p != 1 << stages:
      raise ValueError(f"tokenizer={self.tokenizer!r} needs a power-of-two patch_size, got {p}")
    width = self.stem_width or max(self.dim // 4, 8)
    if self.tokenizer == "convstem":
      # Xiao et al.: stride-2 3x3 convs with BN + ReLU, then a 1x1 conv to the width. Ours adds
      # one stride-1 conv first so the thin membrane signal is seen at full resolution.
      strides = ([1] if self.stem_full_res else []) + [2] * stages
      if self.stem_blocks_from >= len(strides):
        raise ValueError(f"stem_blocks_from={self.stem_blocks_from}: this stem has "
                         f"{len(strides)} convs (patch_size={p}, stem_full_res="
                         f"{self.stem_full_res}); pick 0 to {len(strides) - 1}")
      for i, stride in enumerate(strides):
        x = layers.ConvBN(width, 3, stride=stride, impl=self.stem_impl, dtype=self.dtype,
                          name=f"stem{i}")(x, train)
        x = nn.relu(x)
        for j in range(self.stem_blocks if i >= self.stem_blocks_from else 0):
          x = BasicBlock(x.shape[-1], impl=self.stem_impl, dtype=self.dtype,
                         name=f"stem{i}_block{j}")(x, train)
        width = min(width * 2, self.dim) if i < len(strides) - 1 else width
      return nn.Conv(self.dim, (1, 1), dtype=self.dtype, name="embed")(x)
    # CCT: conv (no bias) + ReLU + overlapping max-pool per stage; the last stage emits dim.
    for i in range(stages):
      out = self.dim if i == stages - 1 else width
      x = nn.Conv(out, (3, 3), padding="SAME", use_bias=False, kernel_init=layers.he_fan_out,
                  dtype=self.dtype, name=f"stem{i}")(x)
      x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding="SAME")
    return x
