"""Gaussian blur of NHWC image batches in jnp, matching `scipy.ndimage.gaussian_filter`.

Used for the blur-robustness study (blur at 40 px before the 40->224 resize, or at 224 px
after it) and for blur augmentation inside the jitted train step, so it is pure jnp: no
host round trip, and XLA fuses it with the resize / normalisation around it.

Kernel-radius rule (as scipy): a sample with standard deviation `s` uses the normalised
Gaussian `exp(-x^2 / (2 s^2))` on the integer offsets `|x| <= int(truncate * s + 0.5)`.
The convolution itself has one static radius `R = ceil(truncate * max_sigma)`, which is
never smaller than any sample's own radius; offsets beyond a sample's own radius get
weight 0, so every sample is filtered exactly as scipy would filter it alone.

Boundary rule: `mode='reflect'` is scipy's 'reflect' (d c b a | a b c d | d c b a, the
edge pixel repeated), done with `jnp.pad(mode='symmetric')` (method='conv') or the same
index rule folded into the filter matrix (method='matmul'); a radius larger than the
image is handled by repeated reflection, as in scipy.  Also 'mirror' (d c b | a b c d |
c b a), 'nearest', 'wrap' and 'constant' (with `cval`), each equal to scipy's mode of the
same name.  Note scipy filters along H and then along W, each pass padding its own input;
for these modes that equals padding both axes first, which is what the conv path does.

Sigmas known at trace time get float64 numpy kernels (scipy's numbers); traced sigmas get
float32 jnp kernels, whose own radius `floor(truncate * s + 0.5)` can differ from
scipy's float64 one only when truncate * s + 0.5 is within float32 rounding of an integer.
"""
import math
from typing import Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

# scipy mode name -> jnp.pad mode.
_PAD_MODES = {
    "reflect": "symmetric",
    "mirror": "reflect",
    "nearest": "edge",
    "wrap": "wrap",
    "constant": "constant",
}


def kernel_radius(sigma: float, truncate: float = 3.0) -> int:
  """scipy's radius for one sigma: `int(truncate * sigma + 0.5)`."""
  return int(truncate * float(sigma) + 0.5)


def static_radius(max_sigma: float, truncate: float = 3.0) -> int:
  """The static convolution radius `ceil(truncate * max_sigma)`.

  It is >= `kernel_radius(s)` for s <= max_sigma.
  """
  return int(math.ceil(truncate * float(max_sigma)))


def _concrete(x):
  """`x` as a numpy array if its value is known now, else None.

  Known now: a Python number, a numpy array or a committed jax array.
  """
  if isinstance(x, jax.core.Tracer):
    return None
  return np.asarray(x)


def gaussian_weights(sigma, radius: int, truncate: float = 3.0, xp=jnp):
  """1-D Gaussian kernels, one per sigma: shape `sigma.shape + (2 * radius + 1,)`.

  Each row is scipy's kernel for that sigma (support `|x| <= int(truncate*s + 0.5)`,
  normalised to sum 1) zero-padded to the common `radius`; sigma 0 gives the unit impulse.
  `xp` is `np` (float64, for sigmas known at trace time: the exact scipy numbers) or `jnp`
  (traced sigmas; differentiable in sigma almost everywhere).
  """
  sigma = xp.asarray(sigma)[..., None]
  x = xp.arange(-radius, radius + 1, dtype=sigma.dtype)
  positive = sigma > 0
  # Double-where: the unused branch must not divide by zero, or grad w.r.t. sigma is NaN.
  safe = xp.where(positive, sigma, xp.ones_like(sigma))
  own_radius = xp.floor(truncate * safe + 0.5)
  g = xp.where(xp.abs(x) <= own_radius, xp.exp(-0.5 * (x / safe) ** 2), 0.0)
  g = g / g.sum(axis=-1, keepdims=True)
  impulse = (x == 0).astype(g.dtype)
  return xp.where(positive, g, impulse)


def _check_rank(images):
  if images.ndim != 4:
    raise ValueError(
        f"gaussian_blur expects images of rank 4 (B, H, W, C), got shape {images.shape}.")


def gaussian_blur(
    images,
    sigma: Union[float, np.ndarray, jax.Array],
    *,
    truncate: float = 3.0,
    mode: str = "reflect",
    cval: float = 0.0,
    max_sigma: Optional[float] = None,
    method: str = "auto",
    precision=jax.lax.Precision.HIGHEST,
):
  """Gaussian blur of a batch of NHWC images over H and W (not across channels).

  Equal to `scipy.ndimage.gaussian_filter(img, sigma=(s, s, 0), truncate=truncate,
  mode=mode, cval=cval)` for every image `img` with its sigma `s` (see the module
  docstring for the radius and boundary rules).

  Args:
    images: (B, H, W, C) floats.  Integer images (e.g. the uint8 batches the host sends)
      are cast to float32 first, and float32 is returned; float images keep their dtype.
    sigma: a scalar (one blur for the whole batch) or a (B,) array (one blur per sample,
      so one batch can hold several blur levels).  Sigma 0 returns that sample's input
      values unchanged.  Must be >= 0.
    truncate: kernel support in standard deviations (scipy's `truncate`).  Note the
      default 3.0 here against scipy's 4.0: pass truncate explicitly when comparing.
    mode: 'reflect' (default), 'mirror', 'nearest', 'wrap' or 'constant', as in scipy.
    cval: fill value for mode='constant'.
    max_sigma: static upper bound on sigma, fixing the kernel radius
      `ceil(truncate * max_sigma)`.  Required when `sigma` is traced (a jit argument, or
      drawn at random in the step), because shapes must be static under jit; optional
      (defaults to max(sigma)) when sigma is a Python / numpy value.  A traced sigma above
      max_sigma cannot be caught: its kernel is cut at that radius (and renormalised), and a
      traced negative sigma is treated as 0.
    method: 'conv' (separable depthwise `lax.conv_general_dilated`, vertical then
      horizontal pass), 'matmul' (the same two 1-D filters as (H, H) and (W, W) matrices
      with the boundary folded in; ~30-60x faster on XLA:CPU, see `_blur_matmul`) or 'auto'
      (matmul on the CPU backend, conv elsewhere; only the CPU choice has been measured).
      Both give scipy's result to float32 rounding.
    precision: precision of the convolutions / matmuls.  HIGHEST by default so the result stays
      within 1e-5 of scipy on accelerators too (TF32 / bf16 passes would not).

  Returns:
    The blurred batch, shape (B, H, W, C).
  """
  images = jnp.asarray(images)
  _check_rank(images)
  if not jnp.issubdtype(images.dtype, jnp.floating):
    images = images.astype(jnp.float32)
  if mode not in _PAD_MODES:
    raise ValueError(f"mode must be one of {sorted(_PAD_MODES)}, got {mode!r}.")
  if method not in ("auto", "conv", "matmul"):
    raise ValueError(f"method must be 'auto', 'conv' or 'matmul', got {method!r}.")
  if not truncate > 0:
    raise ValueError(f"truncate must be > 0, got {truncate}.")
  batch, height, width, channels = images.shape

  sigma_np = _concrete(sigma)
  sigma_ndim = np.ndim(sigma) if sigma_np is None else sigma_np.ndim
  sigma_shape = np.shape(sigma) if sigma_np is None else sigma_np.shape
  if sigma_ndim > 1 or (sigma_ndim == 1 and sigma_shape[0] != batch):
    raise ValueError(
        f"sigma must be a scalar or have shape ({batch},) for images {images.shape}, "
        f"got shape {sigma_shape}.")
  if sigma_np is not None:
    if not np.all(np.isfinite(sigma_np)) or np.any(sigma_np < 0):
      raise ValueError(f"sigma must be finite and >= 0, got {sigma_np}.")
    if max_sigma is None:
      max_sigma = float(sigma_np.max()) if sigma_np.size else 0.0
    elif np.any(sigma_np > max_sigma):
      raise ValueError(f"sigma {sigma_np} exceeds max_sigma={max_sigma}.")
  elif max_sigma is None:
    raise ValueError(
        "sigma is traced (e.g. a jit argument), so the kernel radius cannot be read from it: "
        "pass a static max_sigma=... (radius ceil(truncate * max_sigma)).")
  if not max_sigma >= 0:
    raise ValueError(f"max_sigma must be >= 0, got {max_sigma}.")

  radius = static_radius(max_sigma, truncate)
  if radius == 0:
    # Every sigma is too small to reach a neighbour (scipy's own radius is 0 too).
    return images

  # Kernels in at least float32 even for bf16 images: bf16 sigmas would move the radius.
  wdtype = jnp.promote_types(images.dtype, jnp.float32)
  if sigma_np is not None:
    # Known now: float64 numpy kernels, the very numbers scipy uses, baked in as constants.
    weights = gaussian_weights(sigma_np.astype(np.float64), radius, truncate, xp=np)
    xp = np
  else:
    sigma = jnp.asarray(sigma, dtype=wdtype)
    weights = gaussian_weights(jnp.maximum(sigma, 0), radius, truncate, xp=jnp)
    xp = jnp

  if method == "auto":
    method = "matmul" if jax.default_backend() == "cpu" else "conv"
  if method == "conv":
    out = _blur_conv(images, jnp.asarray(weights, wdtype), radius, mode, cval, precision)
  else:
    out = _blur_matmul(images, weights, radius, mode, cval, precision, xp)

  if sigma_np is not None:
    if np.all(sigma_np > 0):
      return out
    keep = jnp.asarray(np.broadcast_to(sigma_np == 0, (batch,)))
  else:
    keep = jnp.broadcast_to(sigma <= 0, (batch,))
  # Both methods already return the input for sigma 0 (x*1 + 0*y is exact in fp32), but
  # that rests on the backend's arithmetic at the chosen precision: select the input so
  # sigma 0 is the identity bit for bit everywhere.
  return jnp.where(keep[:, None, None, None], images, out)


def _blur_conv(images, weights, radius, mode, cval, precision):
  """Separable depthwise `conv_general_dilated`; weights (K,) shared or (B, K) per sample."""
  batch, height, width, channels = images.shape
  # Pad H and W once.  Padding W before the vertical pass is the same as padding after it
  # (the vertical filter maps each padded copy of a column to the copy of its result), so
  # both passes can be VALID convolutions.
  pad = ((0, 0), (radius, radius), (radius, radius), (0, 0))
  if mode == "constant":
    padded = jnp.pad(images, pad, mode="constant", constant_values=cval)
  else:
    padded = jnp.pad(images, pad, mode=_PAD_MODES[mode])

  if weights.ndim == 1:
    # One kernel for the batch: depthwise conv, the batch stays the conv's N dimension.
    kernel = jnp.broadcast_to(weights[:, None], (2 * radius + 1, channels))
    return _separable_depthwise(padded, kernel, precision)
  # One kernel per sample.  Fold the batch into the channel axis,
  # (B, H, W, C) -> (1, H, W, B*C) with feature_group_count = B*C, rather than vmap: vmap
  # of a conv whose kernel is batched lowers to this same folded grouped conv (jax's
  # batching rule; the compiled HLO holds identical convolution ops, same speed on CPU),
  # so writing it out costs nothing and shows what runs.  Neither is fast on XLA:CPU,
  # which is why method='auto' takes the matmul path there.
  kernel = jnp.repeat(weights.T, channels, axis=1)  # (2R+1, B*C), sample-major like the fold
  folded = jnp.transpose(padded, (1, 2, 0, 3)).reshape(1, *padded.shape[1:3], batch * channels)
  out = _separable_depthwise(folded, kernel, precision)
  return jnp.transpose(out.reshape(height, width, batch, channels), (2, 0, 1, 3))


def _separable_depthwise(x, kernel, precision):
  """VALID vertical then horizontal depthwise pass of a (K, G) kernel over NHWC x (G channels)."""
  taps, groups = kernel.shape
  dn = ("NHWC", "HWIO", "NHWC")
  conv = lambda y, k: jax.lax.conv_general_dilated(
      y, k.astype(y.dtype), window_strides=(1, 1), padding="VALID", dimension_numbers=dn,
      feature_group_count=groups, precision=precision)
  x = conv(x, kernel.reshape(taps, 1, 1, groups))
  return conv(x, kernel.reshape(1, taps, 1, groups))


def _axis_operator(weights, n, radius, mode, xp, precision):
  """The 1-D filter along an axis of length n as a matrix, boundary included.

  Returns (A, c): A of shape weights.shape[:-1] + (n, n) and c of shape
  weights.shape[:-1] + (n,), such that filtering a line x gives `A @ x + cval * c`
  (c is the weight that falls outside the image, used by mode='constant').
  """
  taps = 2 * radius + 1
  # Source index of each padded position, from the same jnp.pad rule as the conv path
  # (numpy's pad implements it identically); -1 marks a constant-mode fill.
  if mode == "constant":
    src = np.pad(np.arange(n), radius, mode="constant", constant_values=-1)
  else:
    src = np.pad(np.arange(n), radius, mode=_PAD_MODES[mode])
  pad_matrix = (src[:, None] == np.arange(n)[None, :]).astype(np.float64)  # (n+2R, n)
  outside = (src == -1).astype(np.float64)  # (n+2R,)
  # Band (Toeplitz) matrix of the correlation with the padded line: out[i] = sum_k w[k] pad[i+k].
  offset = np.arange(n + 2 * radius)[None, :] - np.arange(n)[:, None]
  in_band = (offset >= 0) & (offset < taps)
  band = xp.where(in_band, weights[..., np.clip(offset, 0, taps - 1)], 0.0)  # (..., n, n+2R)
  if xp is np:
    return band @ pad_matrix, band @ outside
  mm = lambda a, b: jnp.matmul(a, jnp.asarray(b, a.dtype), precision=precision)
  return mm(band, pad_matrix), mm(band, outside)


def _blur_matmul(images, weights, radius, mode, cval, precision, xp):
  """The same filter as `_blur_conv`, as two batched matmuls with (H, H) and (W, W) operators.

  Why: XLA:CPU lowers a grouped (depthwise) convolution to a slow generic loop, while a
  matmul goes to its tuned GEMM.  Measured on this project's 2-core CPU (per-sample sigma,
  float32): (256, 40, 40, 3) up to sigma 3: conv ~210 ms, matmul ~7 ms; (32, 224, 224, 3)
  up to sigma 16.8: conv ~3.4 s, matmul ~55 ms.  The operator costs n MACs per output
  instead of 2R+1, which is cheap at these image sizes, and it holds the boundary rule, so
  no padding is materialised.
  """
  height, width = images.shape[1:3]
  dtype = images.dtype
  a_v, c_v = _axis_operator(weights, height, radius, mode, xp, precision)
  a_h, c_h = _axis_operator(weights, width, radius, mode, xp, precision)
  a_v, c_v, a_h, c_h = (jnp.asarray(t, dtype) for t in (a_v, c_v, a_h, c_h))
  per_sample = weights.ndim == 2
  ein = lambda spec, a, x: jnp.einsum(spec, a, x, precision=precision)
  # Vertical then horizontal, like scipy (which filters axis 0 and then axis 1).
  out = ein("bij,bjwc->biwc" if per_sample else "ij,bjwc->biwc", a_v, images)
  if mode == "constant":
    out = out + cval * (c_v[..., :, None, None] if per_sample else c_v[None, :, None, None])
  out = ein("bwv,bhvc->bhwc" if per_sample else "wv,bhvc->bhwc", a_h, out)
  if mode == "constant":
    out = out + cval * (c_h[..., None, :, None] if per_sample else c_h[None, None, :, None])
  return out
