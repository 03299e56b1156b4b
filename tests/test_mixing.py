"""ops/mixing.py: mixup and CutMix of images and soft targets."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cellvit_jax.ops import mixing

B, H, W, K = 8, 40, 40, 4


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(0, 1, (B, H, W, 3)).astype(np.float32)
  labels = rng.integers(0, K, B)
  targets = np.asarray(optax.smooth_labels(jax.nn.one_hot(labels, K), 0.1))
  return images, targets


def test_mixup_is_the_convex_combination_with_the_permuted_batch():
  images, targets = _batch()
  perm = np.roll(np.arange(B), 3)
  x, y = mixing.mixup(images, targets, 0.3, perm)
  np.testing.assert_allclose(np.asarray(x), 0.3 * images + 0.7 * images[perm], atol=1e-6)
  np.testing.assert_allclose(np.asarray(y), 0.3 * targets + 0.7 * targets[perm], atol=1e-6)
  np.testing.assert_allclose(np.asarray(y).sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_target_weight_is_the_pasted_area_fraction_exactly(seed):
  images = np.broadcast_to(np.arange(1, B + 1, dtype=np.float32)[:, None, None, None],
                           (B, H, W, 3)).copy()  # sample i is the constant i + 1
  _, targets = _batch(seed)
  perm = np.roll(np.arange(B), 1)
  k_lam, k_box = jax.random.split(jax.random.key(seed))
  lam = jax.random.uniform(k_lam)
  mask = np.asarray(mixing.cutmix_box(k_box, lam, H, W))
  x, y, w = (np.asarray(a) for a in mixing.cutmix(images, targets, mask, perm))
  pasted = x != images  # the partner's constant differs from every sample's own
  assert np.array_equal(pasted, np.broadcast_to(mask[None, :, :, None], pasted.shape))
  np.testing.assert_array_equal(x[pasted], images[perm][pasted])
  count = pasted[0, :, :, 0].sum()
  assert w == np.float32(count) / np.float32(H * W)
  np.testing.assert_array_equal(y, (1 - w) * targets + w * targets[perm])
  np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-6)
  # The box is one rectangle, no larger than the drawn 1 - lam (smaller when clipped).
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  if count:
    assert count == rows.size * cols.size
    assert rows.size <= int(H * np.sqrt(1 - float(lam))) and cols.size <= int(
        W * np.sqrt(1 - float(lam)))
  assert w <= 1 - float(lam) + 1e-6


def test_cutmix_box_area_when_it_is_not_clipped():
  # lam = 0.75 -> sides floor(40 * 0.5) = 20; over many centres, the unclipped boxes are 20x20.
  areas = [int(np.asarray(mixing.cutmix_box(jax.random.key(i), 0.75, H, W)).sum())
           for i in range(40)]
  assert max(areas) == 400 and min(areas) < 400  # some centres near the border clip the box


def test_both_alphas_zero_returns_the_inputs():
  images, targets = _batch()
  x, y = mixing.random_mix(jax.random.key(0), images, targets, 0.0, 0.0)
  assert x is images and y is targets


@pytest.mark.parametrize("mixup_alpha,cutmix_alpha", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_random_mix_targets_are_distributions_and_deterministic(mixup_alpha, cutmix_alpha):
  images, targets = _batch()
  f = jax.jit(lambda r, x, t: mixing.random_mix(r, x, t, mixup_alpha, cutmix_alpha))
  x, y = (np.asarray(a) for a in f(jax.random.key(5), images, targets))
  np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-6)
  assert y.min() >= 0 and x.shape == images.shape and x.dtype == np.float32
  x2, y2 = (np.asarray(a) for a in f(jax.random.key(5), images, targets))
  np.testing.assert_array_equal(x, x2)
  np.testing.assert_array_equal(y, y2)
  assert not np.array_equal(y, targets) and not np.array_equal(x, images)


def test_random_mix_with_both_picks_cutmix_in_about_half_the_batches():
  images, targets = _batch()
  f = jax.jit(lambda r: mixing.random_mix(r, images, targets, 0.4, 1.0)[0])
  kinds = []
  for i in range(100):
    x = np.asarray(f(jax.random.key(i)))
    # CutMix: every pixel is one of the batch's own pixels; mixup: blends (lam < 1 a.s.).
    kinds.append(bool(np.all(np.any(x[:, None] == images[None], axis=1))))
  assert 0.35 < np.mean(kinds) < 0.65, np.mean(kinds)


def test_mixup_lambda_follows_beta():
  """With one-hot targets, a sample mixed with a partner of another class holds lam of its own
  class: over many batches lam's mean is 1/2 and Beta(0.2, 0.2) puts most mass near 0 and 1."""
  images = np.zeros((B, 2, 2, 3), np.float32)
  targets = jnp.eye(B)  # every sample its own class
  f = jax.jit(lambda r: mixing.random_mix(r, images, targets, 0.2, 0.0)[1])
  lams = []
  for i in range(300):
    y = np.asarray(f(jax.random.key(i)))
    own = np.diag(y)
    lams.append(own[own < 1][0] if np.any(own < 1) else 1.0)
  lams = np.array(lams)
  assert abs(lams.mean() - 0.5) < 0.08
  assert np.mean((lams < 0.1) | (lams > 0.9)) > 0.5


def test_bad_alpha_is_named():
  images, targets = _batch()
  with pytest.raises(ValueError, match=r"cutmix_alpha=-1.0 must be a finite number >= 0"):
    mixing.random_mix(jax.random.key(0), images, targets, 0.0, -1.0)
