"""Layers shared by several models: MLP, drop path, conv + BatchNorm, self-attention, encoder
block, position embeddings, squeeze-excitation, and the (shifted) window attention pieces
used by Swin.

Every model takes float images NHWC and `train: bool`; stochastic layers draw from the
'dropout' RNG stream, so one rng argument drives dropout and drop path alike.
"""
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cellvit_jax.models import conv_impl

Dtype = Any


class DropPath(nn.Module):
  """Stochastic depth (Huang et al. 2016): drops the whole residual branch per sample."""
  rate: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool):
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


# He initialisation on fan-out (the ResNet and EfficientNet references' conv init).
he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class FormConv(nn.Module):
  """nn.Conv's parameters ('kernel', HWIO, no bias) computed in one of conv_impl.FORMS."""
  features: int
  kernel: int
  stride: int = 1
  form: str = "matmul"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", he_fan_out,
                        (self.kernel, self.kernel, x.shape[-1], self.features), jnp.float32)
    return conv_impl.FORMS[self.form](x.astype(self.dtype), kernel.astype(self.dtype),
                                       self.stride)


class ConvBN(nn.Module):
  """Conv (no bias, 'same' k//2 padding, optional groups) -> BatchNorm; no activation.

  `zero_scale` starts the BN scale at zero (a residual branch that begins as nothing).
  `impl`: one of conv_impl.CONV_IMPLS ('matmul' and 'mixed' for groups=1 only; 'auto'
  falls back to XLA's convolution for groups); the parameters are the same in every form.
  Parameter names: <name>/conv/kernel, <name>/bn/{scale,bias}.
  """
  features: int
  kernel: int
  stride: int = 1
  groups: int = 1
  zero_scale: bool = False
  epsilon: float = 1e-5
  bn_momentum: float = 0.9
  impl: str = "conv"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    k, p = self.kernel, self.kernel // 2
    impl = conv_impl.resolve_conv_impl(self.impl)
    if impl != "conv" and self.groups != 1:
      if self.impl == impl:
        raise ValueError(f"ConvBN impl={impl!r} supports groups=1 only (got {self.groups}); "
                         "use impl='conv' or 'auto'")
      impl = "conv"
    if impl != "conv":
      x = FormConv(self.features, k, self.stride, impl, dtype=self.dtype, name="conv")(x)
    else:
      x = nn.Conv(self.features, (k, k), strides=(self.stride, self.stride),
                  padding=((p, p), (p, p)), feature_group_count=self.groups, use_bias=False,
                  kernel_init=he_fan_out, dtype=self.dtype, name="conv")(x)
    return nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                        epsilon=self.epsilon,
                        scale_init=(nn.initializers.zeros if self.zero_scale
                                    else nn.initializers.ones),
                        dtype=self.dtype, name="bn")(x)


def token_dense(layer: nn.Dense, x):
  """`layer` on the last axis of x, applied to x flattened to 2-D (same parameters, same maths).

  Why: on XLA:CPU the gradient of a Dense on a 3-D (B, N, D) input materialises a transposed
  copy of the (B*N, F) output gradient before the weight-gradient dot (the largest elementwise
  ops of the CustomViT step on the Intel/AMX host's profile); on the 2-D input it does not.
  benchmarks/FINDINGS.md, "Dense layers on 2-D tokens".
  """
  return layer(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], layer.features)


class Mlp(nn.Module):
  """Two dense layers with GELU, as in ViT."""
  hidden_dim: int
  out_dim: Optional[int] = None
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    out_dim = self.out_dim or x.shape[-1]
    x = token_dense(nn.Dense(self.hidden_dim, dtype=self.dtype, name="fc1"), x)
    x = nn.gelu(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = token_dense(nn.Dense(out_dim, dtype=self.dtype, name="fc2"), x)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


class SelfAttention(nn.Module):
  """Multi-head self-attention over tokens (B, N, D).

  `locality=True` is Locality Self-Attention (Lee et al. 2021, "Vision Transformer for
  Small-Size Datasets"): a learnable temperature (initialised at sqrt(head_dim)) and the
  diagonal of the attention matrix masked, so a token cannot attend to itself and the
  softmax gets sharper on small data.

  `bias`, if given, is added to the float32 attention logits before the softmax; it must
  broadcast to (batch, heads, queries, keys). Swin's relative position bias and shifted-window
  mask come in this way (see WindowAttention).
  """
  num_heads: int
  locality: bool = False
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, bias=None):
    b, n, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads={self.num_heads}")
    head_dim = d // self.num_heads
    qkv = token_dense(nn.Dense(3 * d, dtype=self.dtype, name="qkv"), x)
    qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.locality:
      log_temp = self.param("log_temperature", lambda _: jnp.log(jnp.sqrt(head_dim * 1.0)))
      scale = 1.0 / jnp.exp(log_temp)
    else:
      scale = head_dim ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
    if bias is not None:
      logits = logits + bias.astype(jnp.float32)
    if self.locality:
      logits = jnp.where(jnp.eye(n, dtype=bool), jnp.finfo(jnp.float32).min, logits)
    attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    attn = nn.Dropout(self.dropout, deterministic=not train)(attn)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, n, d)
    return token_dense(nn.Dense(d, dtype=self.dtype, name="proj"), out)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: x + DropPath(Attn(LN(x))); x + DropPath(MLP(LN(x)))."""
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dropout: float = 0.0
  locality: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool, bias=None):
    y = nn.LayerNorm(dtype=self.dtype, name="norm1")(x)
    y = SelfAttention(self.num_heads, self.locality, self.dropout, self.dtype,
                      name="attn")(y, train, bias=bias)
    x = x + DropPath(self.drop_path)(y, train)
    y = nn.LayerNorm(dtype=self.dtype, name="norm2")(x)
    y = Mlp(int(x.shape[-1] * self.mlp_ratio), dropout=self.dropout, dtype=self.dtype,
            name="mlp")(y, train)
    return x + DropPath(self.drop_path)(y, train)


def sincos_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
  """Fixed 2-D sine-cosine position embedding (MAE / big_vision style), shape (h*w, dim)."""
  if dim % 4:
    raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
  y, x = np.mgrid[:h, :w]
  omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4 - 1 if dim > 4 else 1))
  y = y.reshape(-1)[:, None] * omega[None]
  x = x.reshape(-1)[:, None] * omega[None]
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


def drop_path_rates(max_rate: float, depth: int) -> list:
  """Linearly increasing stochastic-depth rates over blocks, 0 for the first."""
  return [max_rate * i / max(depth - 1, 1) for i in range(depth)]


class SqueezeExcite(nn.Module):
  """Squeeze-and-excitation (Hu et al. 2018) on NHWC maps.

  Global average pool -> 1x1 reduce to `reduced_dim` (with bias) -> `act` -> 1x1 expand back to
  the input width -> sigmoid gate, multiplied onto the input. EfficientNet uses it with SiLU and
  `reduced_dim` = a quarter of the MBConv block's *input* width (not the expanded width).
  """
  reduced_dim: int
  act: Callable = nn.silu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = x.mean(axis=(1, 2), keepdims=True)
    s = self.act(nn.Dense(self.reduced_dim, dtype=self.dtype, name="reduce")(s))
    s = nn.Dense(x.shape[-1], dtype=self.dtype, name="expand")(s)
    return x * nn.sigmoid(s)


def window_partition(x, window: int):
  """(B, H, W, C) -> (B * nW, window * window, C); windows ordered batch-major, then row-major."""
  b, h, w, c = x.shape
  if h % window or w % window:
    raise ValueError(f"a {h}x{w} map cannot be split into {window}x{window} windows")
  x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window * window, c)


def window_reverse(windows, window: int, h: int, w: int):
  """Inverse of window_partition: (B * nW, window * window, C) -> (B, H, W, C)."""
  c = windows.shape[-1]
  x = windows.reshape(-1, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, h, w, c)


def relative_position_index(h: int, w: Optional[int] = None) -> np.ndarray:
  """(N, N) indices into a ((2h-1)(2w-1))-row bias table, N = h * w (Swin, Liu et al. 2021).

  Entry [i, j] encodes the 2-D offset between tokens i and j of an h x w grid (a Swin window:
  h = w = window), so all pairs with the same offset share one learned bias per head.
  """
  w = h if w is None else w
  coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij")).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :]           # (2, N, N): dy in [1-h, h-1], dx
  return ((rel[0] + h - 1) * (2 * w - 1) + rel[1] + w - 1).astype(np.int32)


def gather_bias(table, index: np.ndarray):
  """A (rows, heads) bias table looked up at an (N, N) index: (1, heads, N, N) attention bias."""
  n = index.shape[0]
  return table[index.reshape(-1)].reshape(n, n, table.shape[-1]).transpose(2, 0, 1)[None]


class RelativePositionBias(nn.Module):
  """A learned bias per head and 2-D offset over an h x w token grid, for SelfAttention(bias=).

  As in BEiT (Bao et al. 2022): one table ((2h-1)(2w-1) rows, heads) per block, zero at
  initialisation; with `cls_token` the sequence starts with a class token, whose attention to
  and from the grid, and to itself, get three rows of their own. Returns (1, heads, N, N).
  """
  h: int
  w: int
  num_heads: int
  cls_token: bool = False

  @nn.compact
  def __call__(self):
    grid_rows = (2 * self.h - 1) * (2 * self.w - 1)
    index = relative_position_index(self.h, self.w)
    if self.cls_token:
      n = self.h * self.w + 1
      full = np.empty((n, n), np.int32)
      full[1:, 1:] = index
      full[0, 1:], full[1:, 0], full[0, 0] = grid_rows, grid_rows + 1, grid_rows + 2
      index, grid_rows = full, grid_rows + 3
    return gather_bias(self.param("table", nn.initializers.zeros, (grid_rows, self.num_heads)),
                       index)


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
  """Additive attention mask (nW, N, N) for Swin's cyclically shifted windows.

  After rolling the map by -shift, a window at the bottom/right edge holds tokens from up to
  four regions that were not neighbours in the image; tokens may attend only within their own
  region (0 where allowed, a large negative number elsewhere).
  """
  region = np.zeros((1, h, w, 1), np.float32)
  label = 0
  for hs in (slice(0, h - window), slice(h - window, h - shift), slice(h - shift, h)):
    for ws in (slice(0, w - window), slice(w - window, w - shift), slice(w - shift, w)):
      region[:, hs, ws, :] = label
      label += 1
  b, hh, ww, _ = region.shape
  r = region.reshape(b, hh // window, window, ww // window, window).transpose(0, 1, 3, 2, 4)
  r = r.reshape(-1, window * window)
  same = r[:, :, None] == r[:, None, :]
  return np.where(same, 0.0, -1e9).astype(np.float32)


class WindowAttention(nn.Module):
  """Swin's window multi-head self-attention with a learned relative position bias.

  Input (B * nW, window**2, C) from window_partition; `mask` is None or the (nW, N, N) array
  from shifted_window_mask. The attention itself is SelfAttention (qkv with bias, proj); the
  bias table ((2*window-1)**2, heads) is initialised with a truncated normal of std 0.02.
  """
  num_heads: int
  window: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, train: bool):
    n = self.window * self.window
    if x.shape[1] != n:
      raise ValueError(f"expected {n} tokens per window, got {x.shape[1]}")
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * self.window - 1) ** 2, self.num_heads))
    bias = gather_bias(table, relative_position_index(self.window))
    # (nW, 1, N, N) + (1, heads, N, N), tiled over the batch (batch-major windows).
    if mask is not None:
      num_windows = mask.shape[0]
      bias = bias + jnp.asarray(mask)[:, None]
      bias = jnp.tile(bias, (x.shape[0] // num_windows, 1, 1, 1))
    return SelfAttention(self.num_heads, dropout=self.dropout, dtype=self.dtype, name="attn")(
        x, train, bias=bias)
