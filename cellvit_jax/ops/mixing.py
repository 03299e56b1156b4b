"""Mixup and CutMix of a batch and its soft targets, in jnp (inside the jitted train step).

- mixup (Zhang et al. 2018, "mixup: Beyond empirical risk minimization"):
  x = lam x + (1 - lam) x[perm], y = lam y + (1 - lam) y[perm], lam ~ Beta(a, a).
- CutMix (Yun et al. 2019, "CutMix: Regularization strategy to train strong classifiers with
  localizable features"): a box of sides (H, W) * sqrt(1 - lam), centred uniformly at random
  and clipped to the image, is pasted from x[perm]; the targets are mixed by the box's exact
  area fraction w (after rounding to pixels and clipping): y = (1 - w) y + w y[perm].

One lam, one box and one permutation per batch, as in both papers' reference code. Applied
to the already augmented float images and the label-smoothed one-hot targets.
"""
import math

import jax
import jax.numpy as jnp


def mixup(images, targets, lam, perm):
  """images (B, ...), targets (B, K), lam a scalar in [0, 1], perm (B,) -> mixed pair."""
  images, targets = jnp.asarray(images), jnp.asarray(targets)
  lam_x = jnp.asarray(lam, images.dtype)
  lam_y = jnp.asarray(lam, targets.dtype)
  return (lam_x * images + (1 - lam_x) * images[perm],
          lam_y * targets + (1 - lam_y) * targets[perm])


def cutmix_box(rng, lam, height: int, width: int):
  """(H, W) bool mask of the pasted box: sides floor((H, W) * sqrt(1 - lam)), centre uniform
  over the pixels, clipped to the image (so its area can be smaller than 1 - lam)."""
  cut = jnp.sqrt(1.0 - jnp.asarray(lam, jnp.float32))
  cut_h = jnp.floor(height * cut).astype(jnp.int32)
  cut_w = jnp.floor(width * cut).astype(jnp.int32)
  k_y, k_x = jax.random.split(rng)
  cy = jax.random.randint(k_y, (), 0, height)
  cx = jax.random.randint(k_x, (), 0, width)
  y0, y1 = cy - cut_h // 2, cy - cut_h // 2 + cut_h
  x0, x1 = cx - cut_w // 2, cx - cut_w // 2 + cut_w
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  # Out-of-image parts of the box select no pixel: this comparison is the clipping.
  return (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)


def cutmix(images, targets, mask, perm):
  """Paste images[perm] where `mask` (H, W) is true; targets mixed by the pasted area fraction.

  Returns (images, targets, w) with w = mask.sum() / (H * W), the fraction of every sample
  that now comes from its partner."""
  height, width = mask.shape
  images, targets = jnp.asarray(images), jnp.asarray(targets)
  images = jnp.where(mask[None, :, :, None], images[perm], images)
  w = (jnp.sum(mask, dtype=jnp.int32) / (height * width)).astype(targets.dtype)
  return images, (1 - w) * targets + w * targets[perm], w


def check_alpha(name, value):
  """A Beta concentration: a finite number >= 0 (0: off)."""
  try:
    v = float(value)
  except (TypeError, ValueError):
    v = math.nan
  if not (math.isfinite(v) and v >= 0.0):
    raise ValueError(f"{name}={value!r} must be a finite number >= 0 (0 turns it off).")
  return v


def random_mix(rng, images, targets, mixup_alpha: float, cutmix_alpha: float):
  """Mixup (mixup_alpha > 0), CutMix (cutmix_alpha > 0) or, when both are > 0, one of the two
  chosen per batch with probability 0.5 each. Both 0: the inputs themselves.

  images (B, H, W, C) float, targets (B, K) soft labels; the alphas are static numbers.
  """
  mixup_alpha = check_alpha("mixup_alpha", mixup_alpha)
  cutmix_alpha = check_alpha("cutmix_alpha", cutmix_alpha)
  if mixup_alpha == 0.0 and cutmix_alpha == 0.0:
    return images, targets
  if images.ndim != 4 or targets.ndim != 2 or images.shape[0] != targets.shape[0]:
    raise ValueError(f"random_mix expects images (B, H, W, C) and targets (B, K), got "
                     f"{images.shape} and {targets.shape}.")
  k_perm, k_mixup, k_cutmix, k_box, k_choice = jax.random.split(rng, 5)
  perm = jax.random.permutation(k_perm, images.shape[0])
  mixed = []
  if mixup_alpha > 0:
    lam = jax.random.beta(k_mixup, mixup_alpha, mixup_alpha)
    mixed.append(mixup(images, targets, lam, perm))
  if cutmix_alpha > 0:
    lam = jax.random.beta(k_cutmix, cutmix_alpha, cutmix_alpha)
    mask = cutmix_box(k_box, lam, images.shape[1], images.shape[2])
    mixed.append(cutmix(images, targets, mask, perm)[:2])
  if len(mixed) == 1:
    return mixed[0]
  use_cutmix = jax.random.bernoulli(k_choice, 0.5)
  return jax.tree.map(lambda c, m: jnp.where(use_cutmix, c, m), mixed[1], mixed[0])
