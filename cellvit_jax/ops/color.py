"""Colour and stain jitter of float [0, 1] RGB batches, per sample, in jnp.

Train-time augmentations that run inside the jitted step (after flips / rotations, before
blur and normalisation), pure functions of an rng and the images:

- `random_hed_jitter`: stain jitter in the style of Tellez et al. 2018 ("Whole-slide mitosis
  detection in H&E breast histology using PHH3 as a reference to train distilled
  stain-invariant convolutional networks"): RGB -> optical density -> haematoxylin / eosin /
  DAB by colour deconvolution (Ruifrok & Johnston 2001), each stain channel scaled by
  alpha ~ U(1 - scale, 1 + scale) and shifted by beta ~ U(-shift, shift) per sample, back to
  RGB, clipped to [0, 1]. HED fits this project's H-DAB immunostains (eosin is ~absent).
- `random_color_jitter`: brightness, contrast and saturation factors ~ U(1 - s, 1 + s) per
  sample (torchvision's ColorJitter definitions), in that fixed order, clipped after each.
  No hue jitter: in H-DAB the hue (blue haematoxylin vs brown DAB) is the label's signal.

Conversions match `skimage.color.rgb2hed` / `hed2rgb` (same matrix, same 1e-6 floor and
stain units) except that `rgb_to_hed` does not clip negative stain values to 0: without the
clip the round trip is the identity (to float32 rounding) for pixels >= 1e-6, so a jitter
of alpha = 1, beta = 0 leaves the image as it was. 3x3 colour transforms are written as
elementwise products, not matmuls, so they are plain float32 on every backend (no TF32 /
bf16 matmul passes on accelerators).

A strength or probability of 0 returns the input itself (bitwise): the off path adds no op.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np

# Stain optical-density vectors (rows: haematoxylin, eosin, DAB; columns: R, G, B) of
# Ruifrok & Johnston 2001, exactly skimage.color.rgb_from_hed.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
# skimage's floor before the log, and its stain unit: optical density / -ln(1e-6).
_RGB_FLOOR = 1e-6
_LOG_ADJUST = -math.log(_RGB_FLOOR)

# ITU-R 601 luma weights, torchvision's rgb_to_grayscale.
_GREY = np.array([0.299, 0.587, 0.114])


def _mix3(x, matrix):
  """x (..., 3) @ matrix (3, 3) as three broadcast products (exact float32 everywhere)."""
  m = jnp.asarray(matrix, x.dtype)
  return x[..., 0:1] * m[0] + x[..., 1:2] * m[1] + x[..., 2:3] * m[2]


def rgb_to_hed(rgb):
  """RGB in [0, 1] (..., 3) -> stain amounts (..., 3) in skimage.color.rgb2hed's units
  (not clipped at 0, unlike rgb2hed)."""
  od = -jnp.log(jnp.maximum(rgb, _RGB_FLOOR)) / _LOG_ADJUST
  return _mix3(od, HED_FROM_RGB)


def hed_to_rgb(hed):
  """Stain amounts (..., 3) -> RGB clipped to [0, 1]; equals skimage.color.hed2rgb."""
  return jnp.clip(jnp.exp(-_LOG_ADJUST * _mix3(hed, RGB_FROM_HED)), 0.0, 1.0)


def hed_jitter(images, alpha, beta):
  """images (B, H, W, 3) in [0, 1]; alpha, beta (B, 3): stain c of sample b becomes
  alpha[b, c] * stain + beta[b, c]."""
  hed = rgb_to_hed(images)
  hed = hed * alpha[:, None, None, :] + beta[:, None, None, :]
  return hed_to_rgb(hed)


def _grey(x):
  """(..., 3) -> (..., 1) luma."""
  w = jnp.asarray(_GREY, x.dtype)
  return x[..., 0:1] * w[0] + x[..., 1:2] * w[1] + x[..., 2:3] * w[2]


def adjust_brightness(images, factor):
  """x * f per sample (factor (B,)), clipped to [0, 1]."""
  return jnp.clip(images * factor[:, None, None, None], 0.0, 1.0)


def adjust_contrast(images, factor):
  """Blend each sample with its mean grey level: m + f (x - m), clipped."""
  mean = jnp.mean(_grey(images), axis=(1, 2, 3), keepdims=True)
  return jnp.clip(mean + factor[:, None, None, None] * (images - mean), 0.0, 1.0)


def adjust_saturation(images, factor):
  """Blend each pixel with its own grey level: g + f (x - g), clipped."""
  grey = _grey(images)
  return jnp.clip(grey + factor[:, None, None, None] * (images - grey), 0.0, 1.0)


def _check(name, value, high):
  """`value` must be a (static) finite number in [0, high]."""
  try:
    v = float(value)
  except (TypeError, ValueError):
    v = math.nan
  if not (math.isfinite(v) and 0.0 <= v <= high):
    raise ValueError(f"{name}={value!r} must be a finite number in [0, {high:g}].")
  return v


def _check_images(images, fn):
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"{fn} expects RGB images of shape (B, H, W, 3), got {images.shape}.")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"{fn} expects float images in [0, 1], got dtype {images.dtype} "
                     "(convert with ops.normalize.to_float first).")


def check_hed_args(prob, scale, shift):
  """Range checks (static Python numbers); ValueError naming the argument otherwise."""
  # scale <= 1 keeps alpha >= 0: a negative factor would turn a stain into its complement.
  return _check("prob", prob, 1.0), _check("scale", scale, 1.0), _check("shift", shift, 1.0)


def check_color_args(prob, brightness, contrast, saturation):
  """Range checks; strengths <= 1 keep every factor >= 0 (torchvision's limit too)."""
  return (_check("prob", prob, 1.0), _check("brightness", brightness, 1.0),
          _check("contrast", contrast, 1.0), _check("saturation", saturation, 1.0))


def hed_is_off(prob, scale, shift) -> bool:
  return float(prob) == 0.0 or (float(scale) == 0.0 and float(shift) == 0.0)


def color_is_off(prob, brightness, contrast, saturation) -> bool:
  return float(prob) == 0.0 or all(float(s) == 0.0 for s in (brightness, contrast, saturation))


def _factors(rng, batch_size, strength):
  return jax.random.uniform(rng, (batch_size,), jnp.float32, 1.0 - strength, 1.0 + strength)


def random_hed_jitter(rng, images, prob: float, scale: float, shift: float):
  """With probability `prob` per sample, jitter its stains (alpha ~ U(1 - scale, 1 + scale),
  beta ~ U(-shift, shift), drawn per sample and stain); other samples come back unchanged.

  images: float (B, H, W, 3) in [0, 1]. prob, scale, shift: static numbers in [0, 1];
  `shift` is in skimage.color.rgb2hed's stain units (optical density / -ln 1e-6).
  """
  prob, scale, shift = check_hed_args(prob, scale, shift)
  images = jnp.asarray(images)
  _check_images(images, "random_hed_jitter")
  if hed_is_off(prob, scale, shift):
    return images
  b = images.shape[0]
  k_apply, k_alpha, k_beta = jax.random.split(rng, 3)
  apply = jax.random.bernoulli(k_apply, prob, (b,))
  alpha = jax.random.uniform(k_alpha, (b, 3), jnp.float32, 1.0 - scale, 1.0 + scale)
  beta = jax.random.uniform(k_beta, (b, 3), jnp.float32, -shift, shift)
  out = hed_jitter(images, alpha.astype(images.dtype), beta.astype(images.dtype))
  return jnp.where(apply[:, None, None, None], out, images)


def random_color_jitter(rng, images, prob: float, brightness: float, contrast: float,
                        saturation: float):
  """With probability `prob` per sample, brightness, contrast and saturation jitter (each
  factor ~ U(1 - s, 1 + s) per sample; a strength of 0 skips that adjustment); other
  samples come back unchanged. images: float (B, H, W, 3) in [0, 1]; arguments static."""
  prob, brightness, contrast, saturation = check_color_args(prob, brightness, contrast,
                                                            saturation)
  images = jnp.asarray(images)
  _check_images(images, "random_color_jitter")
  if color_is_off(prob, brightness, contrast, saturation):
    return images
  b = images.shape[0]
  k_apply, k_b, k_c, k_s = jax.random.split(rng, 4)
  apply = jax.random.bernoulli(k_apply, prob, (b,))
  out = images
  for key, strength, adjust in ((k_b, brightness, adjust_brightness),
                                (k_c, contrast, adjust_contrast),
                                (k_s, saturation, adjust_saturation)):
    if strength > 0:
      out = adjust(out, _factors(key, b, strength).astype(images.dtype))
  return jnp.where(apply[:, None, None, None], out, images)
