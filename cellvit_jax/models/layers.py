"""Layers shared by several models: MLP, drop path, self-attention, encoder block, position embeddings.

Every model takes float images NHWC and `train: bool`; stochastic layers draw from the
'dropout' RNG stream, so one rng argument drives dropout and drop path alike.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


class Mlp(nn.Module):
  """Two dense layers with GELU, as in ViT."""
  hidden_dim: int
  out_dim: Optional[int] = None
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    out_dim = self.out_dim or x.shape[-1]
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, name="fc1")(x)
    x = nn.gelu(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(out_dim, dtype=self.dtype, name="fc2")(x)
    return nn.Dropout(self.dropout, deterministic=not train)(x)


class SelfAttention(nn.Module):
  """Multi-head self-attention over tokens (B, N, D).

  `locality=True` is Locality Self-Attention (Lee et al. 2021, "Vision Transformer for
  Small-Size Datasets"): a learnable temperature (initialised at sqrt(head_dim)) and the
  diagonal of the attention matrix masked, so a token cannot attend to itself and the
  softmax gets sharper on small data.
  """
  num_heads: int
  locality: bool = False
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    b, n, d = x.shape
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by num_heads={self.num_heads}")
    head_dim = d // self.num_heads
    qkv = nn.Dense(3 * d, dtype=self.dtype, name="qkv")(x)
    qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    if self.locality:
      log_temp = self.param("log_temperature", lambda _: jnp.log(jnp.sqrt(head_dim * 1.0)))
      scale = 1.0 / jnp.exp(log_temp)
    else:
      scale = head_dim ** -0.5
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) * scale
    if self.locality:
      logits = jnp.where(jnp.eye(n, dtype=bool), jnp.finfo(jnp.float32).min, logits)
    attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    attn = nn.Dropout(self.dropout, deterministic=not train)(attn)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, n, d)
    return nn.Dense(d, dtype=self.dtype, name="proj")(out)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block: x + DropPath(Attn(LN(x))); x + DropPath(MLP(LN(x)))."""
  num_heads: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  dropout: float = 0.0
  locality: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    y = nn.LayerNorm(dtype=self.dtype, name="norm1")(x)
    y = SelfAttention(self.num_heads, self.locality, self.dropout, self.dtype, name="attn")(y, train)
    x = x + DropPath(self.drop_path)(y, train)
    y = nn.LayerNorm(dtype=self.dtype, name="norm2")(x)
    y = Mlp(int(x.shape[-1] * self.mlp_ratio), dropout=self.dropout, dtype=self.dtype, name="mlp")(y, train)
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
