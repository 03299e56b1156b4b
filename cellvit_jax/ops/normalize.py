"""uint8 -> normalised float, inside the jitted step (the host only moves uint8)."""
import jax.numpy as jnp


def to_float(images, dtype=jnp.float32):
  """uint8 [0, 255] -> float [0, 1]."""
  return images.astype(dtype) / 255.0


def normalize(images01, mean, std):
  mean = jnp.asarray(mean, images01.dtype)
  std = jnp.asarray(std, images01.dtype)
  return (images01 - mean) / std
