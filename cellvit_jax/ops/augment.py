"""On-device augmentations, run inside the jitted step (pure functions of rng and inputs)."""
import jax
import jax.numpy as jnp
import numpy as np

from cellvit_jax.ops import blur


def sample_blur_sigma(rng, batch_size: int, prob, sigma_min, sigma_max: float):
  """Per-sample blur sigmas: with probability `prob` sigma ~ Uniform(sigma_min, sigma_max), else 0.

  Returns a (batch_size,) float32 array.  `prob` and `sigma_min` may be traced;
  `sigma_max` is the static bound that fixes the blur kernel's radius.
  """
  for name, value in (("prob", prob), ("sigma_min", sigma_min)):
    if not isinstance(value, jax.core.Tracer) and np.ndim(value) != 0:
      raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}.")
  if not isinstance(prob, jax.core.Tracer) and not 0.0 <= float(prob) <= 1.0:
    raise ValueError(f"prob must be in [0, 1], got {prob}.")
  if isinstance(sigma_max, jax.core.Tracer):
    raise ValueError("sigma_max must be a static Python number: it fixes the kernel radius.")
  sigma_max = float(sigma_max)
  if not isinstance(sigma_min, jax.core.Tracer) and not 0.0 <= float(sigma_min) <= sigma_max:
    raise ValueError(f"need 0 <= sigma_min <= sigma_max, got sigma_min={sigma_min}, "
                     f"sigma_max={sigma_max}.")
  apply_rng, sigma_rng = jax.random.split(rng)
  apply = jax.random.bernoulli(apply_rng, prob, (batch_size,))
  sigma = jax.random.uniform(sigma_rng, (batch_size,), jnp.float32, sigma_min, sigma_max)
  return jnp.where(apply, sigma, 0.0)


def random_blur(rng, images, prob, sigma_min, sigma_max: float, **blur_kwargs):
  """Blur each sample with probability `prob`, sigma ~ Uniform(sigma_min, sigma_max).

  Samples that are not drawn for blur come back unchanged (sigma 0 is the exact identity
  of `blur.gaussian_blur`).  `sigma_max` must be static (a Python number): it is the
  `max_sigma` that fixes the kernel radius ceil(truncate * sigma_max) under jit.
  `blur_kwargs` go to `blur.gaussian_blur` (truncate, mode, method, ...).  uint8 images
  are cast to float32, as in `gaussian_blur`.
  """
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError("random_blur expects images of rank 4 (B, H, W, C), "
                     f"got shape {images.shape}.")
  sigma = sample_blur_sigma(rng, images.shape[0], prob, sigma_min, sigma_max)
  return blur.gaussian_blur(images, sigma, max_sigma=float(sigma_max), **blur_kwargs)
