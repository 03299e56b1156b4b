"""Square image resize, the one used wherever a model takes another size than the patches."""
import jax


def square(images, size: int, method: str):
  """(B, H, W, C) -> (B, size, size, C) with jax.image.resize; the identity when already so."""
  if images.shape[1] == images.shape[2] == size:
    return images
  return jax.image.resize(images, (images.shape[0], size, size, images.shape[3]), method=method)
