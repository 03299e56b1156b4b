"""Random flips and 90-degree rotations of square images, per sample, in jnp.

Cells have no up or left, so the 8 symmetries of the square (the dihedral group D4) are
label-preserving. Every element of D4 is an optional transpose followed by optional
vertical and horizontal flips, so per-sample selects between a few cheap views
implement it without gathers; XLA fuses them into the train step.
"""
import jax
import jax.numpy as jnp


def random_dihedral(rng, images, *, flip: bool = True, rot90: bool = True):
  """images (B, H, W, C) with H == W. flip: random H/V flips; rot90: random 90-degree turns."""
  if not (flip or rot90):
    return images
  if images.shape[1] != images.shape[2]:
    raise ValueError(f"random 90-degree rotations need square images, got {images.shape[1:3]}")
  b = images.shape[0]
  k_t, k_v, k_h, k_r = jax.random.split(rng, 4)
  sel = lambda m: m.reshape((b,) + (1,) * (images.ndim - 1))
  if flip and rot90:  # all of D4: transpose x flips
    t = jax.random.bernoulli(k_t, 0.5, (b,))
    v = jax.random.bernoulli(k_v, 0.5, (b,))
    h = jax.random.bernoulli(k_h, 0.5, (b,))
  elif flip:
    t = jnp.zeros((b,), bool)
    v = jax.random.bernoulli(k_v, 0.5, (b,))
    h = jax.random.bernoulli(k_h, 0.5, (b,))
  else:  # rotations only: k * 90 degrees = transpose then flip, or both flips
    k = jax.random.randint(k_r, (b,), 0, 4)
    t = (k == 1) | (k == 3)
    v = (k == 2) | (k == 3)
    h = (k == 1) | (k == 2)
  x = jnp.where(sel(t), jnp.swapaxes(images, 1, 2), images)
  x = jnp.where(sel(v), x[:, ::-1], x)
  return jnp.where(sel(h), x[:, :, ::-1], x)
