"""Dinov2 with register tokens as a Flax Linen module (transformers ships it in PyTorch only).

The computation of transformers' `Dinov2WithRegistersModel` (Darcet et al. 2024, "Vision
Transformers Need Registers"): patch embedding, class token, position embedding (class +
patch grid, bicubically interpolated to other grids), then `num_register_tokens` learned
tokens inserted after the class token, pre-norm blocks with LayerScale and a GELU or SwiGLU
MLP, final LayerNorm.  Parameter names mirror that class's PyTorch state dict
(embeddings.register_tokens, encoder.layer.N.attention.attention.query, layer_scale1.lambda1,
mlp.weights_in, layernorm, ...), so transformers' key renaming (weight -> kernel transposed,
LayerNorm weight -> scale) loads a `Dinov2WithRegistersModel` checkpoint, and our timm
converter (models/fm/convert.py) targets the same names.  The unused mask token is not a
parameter here (no masking at inference).  With `num_register_tokens = 0` it is Dinov2Model.

Called like the transformers Flax ports: `module(pixels_nhwc, deterministic=True)` returns an
object with `last_hidden_state` (B, 1 + registers + patches, hidden) and `pooler_output`.
"""
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from cellvit_jax.models import layers


class Output(NamedTuple):
  last_hidden_state: jax.Array
  pooler_output: jax.Array


def mlp_width(hf_config) -> int:
  """The MLP's inner width, by transformers' formulas (SwiGLU rounds 2/3 of it up to 8)."""
  width = int(hf_config.hidden_size * hf_config.mlp_ratio)
  return (int(width * 2 / 3) + 7) // 8 * 8 if hf_config.use_swiglu_ffn else width


def interpolate_positions(pos, grid_h: int, grid_w: int):
  """(1, 1 + n*n, D) class + square patch table -> (1, 1 + grid_h*grid_w, D), bicubic."""
  n = math.isqrt(pos.shape[1] - 1)
  if n * n == grid_h * grid_w and grid_h == grid_w:
    return pos
  patch = pos[0, 1:].reshape(n, n, -1).astype(jnp.float32)
  patch = jax.image.resize(patch, (grid_h, grid_w, patch.shape[-1]), "bicubic")
  return jnp.concatenate([pos[:, :1], patch.reshape(1, grid_h * grid_w, -1).astype(pos.dtype)], 1)


class _PatchEmbeddings(nn.Module):
  config: Any
  dtype: Any

  @nn.compact
  def __call__(self, x):
    p = self.config.patch_size
    x = nn.Conv(self.config.hidden_size, (p, p), strides=(p, p), padding="VALID",
                dtype=self.dtype, name="projection")(x)
    return x.reshape(x.shape[0], -1, x.shape[-1]), x.shape[1], x.shape[2]


class _Embeddings(nn.Module):
  config: Any
  dtype: Any

  @nn.compact
  def __call__(self, pixels):
    c = self.config
    d, init = c.hidden_size, nn.initializers.normal(c.initializer_range)
    patches, gh, gw = _PatchEmbeddings(c, self.dtype, name="patch_embeddings")(pixels)
    b = patches.shape[0]
    cls = self.param("cls_token", init, (1, 1, d))
    grid = (c.image_size // c.patch_size) ** 2
    pos = self.param("position_embeddings", init, (1, grid + 1, d))
    registers = self.param("register_tokens", nn.initializers.zeros,
                           (1, c.num_register_tokens, d))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(self.dtype), patches], 1)
    x = x + interpolate_positions(pos, gh, gw).astype(self.dtype)
    # Registers after the position embedding: they carry no position.
    regs = jnp.broadcast_to(registers, (b, c.num_register_tokens, d)).astype(self.dtype)
    return jnp.concatenate([x[:, :1], regs, x[:, 1:]], 1)


class _SelfAttention(nn.Module):
  config: Any
  dtype: Any

  @nn.compact
  def __call__(self, x):
    c = self.config
    heads, d = c.num_attention_heads, c.hidden_size
    dense = lambda name: nn.Dense(d, use_bias=c.qkv_bias, dtype=self.dtype, name=name)
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, d // heads)
    q, k, v = (split(layers.token_dense(dense(n), x)) for n in ("query", "key", "value"))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // heads)
    # Softmax in float32 so bf16 compute keeps normalised attention weights.
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return out.reshape(out.shape[0], out.shape[1], d)


class _SelfOutput(nn.Module):
  config: Any
  dtype: Any

  @nn.compact
  def __call__(self, x):
    return layers.token_dense(nn.Dense(self.config.hidden_size, dtype=self.dtype, name="dense"), x)


class _Attention(nn.Module):
  config: Any
  dtype: Any

  @nn.compact
  def __call__(self, x):
    x = _SelfAttention(self.config, self.dtype, name="attention")(x)
    return _SelfOutput(self.config, self.dtype, name="output")(x)


class _LayerScale(nn.Module):
  config: Any

  @nn.compact
  def __call__(self, x):
    c = self.config
    gamma = self.param("lambda1", nn.initializers.constant(c.layerscale_value), (c.hidden_size,))
    return x * gamma.astype(x.dtype)


class _MLP(nn.Module):
  config: Any
  dtype: Any

  @nn.compact
  def __call__(self, x):
    c = self.config
    width = mlp_width(c)
    if c.use_swiglu_ffn:  # transformers' Dinov2SwiGLUFFN: silu(first half) * second half
      dense_in = nn.Dense(2 * width, dtype=self.dtype, name="weights_in")
      x1, x2 = jnp.split(layers.token_dense(dense_in, x), 2, -1)
      return layers.token_dense(nn.Dense(c.hidden_size, dtype=self.dtype, name="weights_out"),
                                nn.silu(x1) * x2)
    if c.hidden_act != "gelu":
      raise ValueError(f"hidden_act={c.hidden_act!r} in the checkpoint's config.json; the "
                       "register-token model runs 'gelu' (exact) or use_swiglu_ffn")
    x = nn.gelu(layers.token_dense(nn.Dense(width, dtype=self.dtype, name="fc1"), x),
                approximate=False)
    return layers.token_dense(nn.Dense(c.hidden_size, dtype=self.dtype, name="fc2"), x)


class _Layer(nn.Module):
  config: Any
  dtype: Any

  @nn.compact
  def __call__(self, x):
    c = self.config
    norm = lambda name: nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name=name)
    h = _Attention(c, self.dtype, name="attention")(norm("norm1")(x))
    x = x + _LayerScale(c, name="layer_scale1")(h)
    h = _MLP(c, self.dtype, name="mlp")(norm("norm2")(x))
    return x + _LayerScale(c, name="layer_scale2")(h)


class _Layers(nn.Module):
  config: Any
  dtype: Any

  @nn.compact
  def __call__(self, x):
    for i in range(self.config.num_hidden_layers):
      x = _Layer(self.config, self.dtype, name=str(i))(x)
    return x


class _Encoder(nn.Module):
  config: Any
  dtype: Any

  @nn.compact
  def __call__(self, x):
    return _Layers(self.config, self.dtype, name="layer")(x)


class Dinov2WithRegisters(nn.Module):
  """`config`: a transformers Dinov2WithRegistersConfig (or anything with its fields)."""
  config: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, pixels, deterministic: bool = True):
    del deterministic  # the published models use no dropout or drop path at inference
    c = self.config
    x = _Embeddings(c, self.dtype, name="embeddings")(pixels.astype(self.dtype))
    x = _Encoder(c, self.dtype, name="encoder")(x)
    x = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype, name="layernorm")(x)
    return Output(last_hidden_state=x, pooler_output=x[:, 0])
