"""gaussian_blur against scipy.ndimage.gaussian_filter, and the random_blur augmentation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from cellvit_jax.ops import augment, blur

SIGMAS = (0.3, 0.5, 1.0, 1.5, 2.0, 3.0)
METHODS = ("conv", "matmul")
MODES = ("reflect", "mirror", "nearest", "wrap", "constant")


def _images(shape, seed=0):
  return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _scipy(img, sigma, truncate=3.0, mode="reflect", cval=0.0):
  """The reference: one HWC image, blurred over H and W only, in float64."""
  return ndimage.gaussian_filter(img.astype(np.float64), sigma=(sigma, sigma, 0),
                                 truncate=truncate, mode=mode, cval=cval)


def _assert_matches_scipy(out, images, sigmas, **kw):
  out = np.asarray(out)
  for i, s in enumerate(sigmas):
    np.testing.assert_allclose(out[i], _scipy(images[i], s, **kw), rtol=0, atol=1e-5,
                               err_msg=f"sample {i}, sigma {s}")


@pytest.mark.parametrize("method", METHODS)
def test_matches_scipy_40px_per_sample(method):
  x = _images((len(SIGMAS), 40, 40, 3))
  out = blur.gaussian_blur(x, np.array(SIGMAS), method=method)
  _assert_matches_scipy(out, x, SIGMAS)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("sigma", (0.5, 3.0))
def test_matches_scipy_40px_scalar_sigma(method, sigma):
  x = _images((2, 40, 40, 3), seed=1)
  _assert_matches_scipy(blur.gaussian_blur(x, sigma, method=method), x, [sigma] * 2)


@pytest.mark.parametrize("method", METHODS)
def test_matches_scipy_224px(method):
  # The sigmas at 224 px: the 40 px grid, and the same grid scaled by the 40->224 resize.
  sigmas = SIGMAS + tuple(s * 224 / 40 for s in SIGMAS)
  x = _images((len(sigmas), 224, 224, 3), seed=2)
  out = jax.jit(lambda x, s: blur.gaussian_blur(x, s, max_sigma=max(sigmas), method=method))(
      x, jnp.asarray(sigmas, jnp.float32))
  _assert_matches_scipy(out, x, sigmas)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", MODES)
def test_modes_and_radius_larger_than_image(method, mode):
  # sigma 5 -> radius 15 on a 7x9 image: scipy reflects / wraps repeatedly; so do we.
  sigmas = (5.0, 1.0, 0.0)
  x = _images((3, 7, 9, 2), seed=3)
  out = blur.gaussian_blur(x, np.array(sigmas), mode=mode, cval=0.25, method=method)
  _assert_matches_scipy(out, x, sigmas, mode=mode, cval=0.25)


@pytest.mark.parametrize("method", METHODS)
def test_truncate_and_traced_sigma(method):
  # Traced sigma builds its kernels in jnp, not numpy: same numbers.
  x = _images((3, 40, 40, 3), seed=4)
  sigmas = (0.7, 1.3, 2.5)
  f = jax.jit(lambda x, s: blur.gaussian_blur(x, s, truncate=4.0, max_sigma=3.0, method=method))
  _assert_matches_scipy(f(x, jnp.asarray(sigmas)), x, sigmas, truncate=4.0)


@pytest.mark.parametrize("method", METHODS)
def test_sigma_zero_is_exact_identity(method):
  x = _images((4, 40, 40, 3), seed=5) * 255.0
  np.testing.assert_array_equal(blur.gaussian_blur(x, 0.0, method=method), x)
  sigmas = np.array([0.0, 2.0, 0.0, 1.0])
  out = np.asarray(blur.gaussian_blur(x, sigmas, method=method))
  np.testing.assert_array_equal(out[[0, 2]], x[[0, 2]])
  assert not np.allclose(out[[1, 3]], x[[1, 3]])
  traced = jax.jit(lambda x, s: blur.gaussian_blur(x, s, max_sigma=2.0, method=method))
  np.testing.assert_array_equal(np.asarray(traced(x, jnp.asarray(sigmas)))[[0, 2]], x[[0, 2]])
  np.testing.assert_array_equal(traced(x, jnp.zeros(4)), x)


def test_uint8_is_cast_to_float32():
  x = np.random.default_rng(6).integers(0, 256, (2, 40, 40, 3), dtype=np.uint8)
  identity = blur.gaussian_blur(x, 0.0)
  assert identity.dtype == jnp.float32
  np.testing.assert_array_equal(identity, x.astype(np.float32))
  out = blur.gaussian_blur(x, 1.5)
  assert out.dtype == jnp.float32
  _assert_matches_scipy(np.asarray(out) / 255.0, x / 255.0, [1.5, 1.5])


@pytest.mark.parametrize("method", METHODS)
def test_per_sample_equals_each_sample_alone(method):
  x = _images((4, 40, 40, 3), seed=7)
  sigmas = np.array([2.0, 0.5, 0.0, 1.0])
  together = np.asarray(blur.gaussian_blur(x, sigmas, method=method))
  for i, s in enumerate(sigmas):
    # Alone, with the same static radius as in the batch and with its own radius.
    alone = blur.gaussian_blur(x[i:i + 1], float(s), max_sigma=2.0, method=method)
    np.testing.assert_allclose(together[i], alone[0], rtol=0, atol=1e-6)
    own = blur.gaussian_blur(x[i:i + 1], float(s), method=method)
    np.testing.assert_allclose(together[i], own[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_grad_wrt_images_matches_finite_difference(method):
  x = _images((2, 12, 12, 3), seed=8)
  probe = jnp.asarray(_images((2, 12, 12, 3), seed=9))
  sigma = jnp.array([1.0, 2.0])

  @jax.jit
  def loss(x):
    return jnp.sum(blur.gaussian_blur(x, sigma, max_sigma=2.0, method=method) * probe)

  g = np.asarray(jax.grad(loss)(x))
  assert np.all(np.isfinite(g)) and np.any(g != 0)
  # The op is linear in x, so a central difference is exact up to float32 rounding.
  eps = 0.05
  for idx in [(0, 0, 0, 0), (1, 5, 7, 2)]:
    d = np.zeros_like(x)
    d[idx] = eps
    fd = (loss(x + d) - loss(x - d)) / (2 * eps)
    np.testing.assert_allclose(g[idx], fd, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("method", METHODS)
def test_grad_wrt_sigma_is_finite_and_matches_finite_difference(method):
  x = jnp.asarray(_images((3, 12, 12, 1), seed=10))
  probe = jnp.asarray(_images((3, 12, 12, 1), seed=11))

  @jax.jit
  def loss(sigma):
    return jnp.sum(blur.gaussian_blur(x, sigma, max_sigma=2.0, method=method) * probe)

  sigma = jnp.array([0.0, 0.8, 1.9])  # sigma 0 must not give NaN (double-where)
  g = np.asarray(jax.grad(loss)(sigma))
  assert np.all(np.isfinite(g)) and np.all(g[1:] != 0)
  eps = 1e-2  # small enough to stay inside one radius step: int(3*s + 0.5) is constant nearby
  for i in (1, 2):
    d = jnp.zeros(3).at[i].set(eps)
    fd = (loss(sigma + d) - loss(sigma - d)) / (2 * eps)
    np.testing.assert_allclose(g[i], fd, rtol=2e-2)


def test_runs_under_jit_inside_a_step():
  # The way the train step uses it: uint8 in, blur, normalise, all in one jitted function.
  x = np.random.default_rng(12).integers(0, 256, (8, 40, 40, 3), dtype=np.uint8)

  @jax.jit
  def step(rng, x):
    y = augment.random_blur(rng, x, 0.5, 0.5, 2.0)
    return (y / 255.0 - 0.5) / 0.25

  out = step(jax.random.key(0), x)
  assert out.shape == (8, 40, 40, 3) and bool(jnp.all(jnp.isfinite(out)))


def test_random_blur_prob_zero_is_identity_and_prob_one_blurs_all():
  x = _images((16, 40, 40, 3), seed=13)
  rng = jax.random.key(1)
  np.testing.assert_array_equal(augment.random_blur(rng, x, 0.0, 0.5, 3.0), x)
  out = np.asarray(augment.random_blur(rng, x, 1.0, 0.5, 3.0))
  assert all(not np.allclose(out[i], x[i]) for i in range(16))


def test_random_blur_is_pure_and_uses_its_sigmas():
  x = _images((6, 40, 40, 3), seed=14)
  rng = jax.random.key(2)
  a = augment.random_blur(rng, x, 0.5, 0.5, 3.0)
  np.testing.assert_array_equal(a, augment.random_blur(rng, x, 0.5, 0.5, 3.0))
  sigma = np.asarray(augment.sample_blur_sigma(rng, 6, 0.5, 0.5, 3.0))
  _assert_matches_scipy(a, x, sigma)


def test_sample_blur_sigma_distribution():
  s = np.asarray(augment.sample_blur_sigma(jax.random.key(3), 20000, 0.3, 1.0, 2.0))
  blurred = s[s > 0]
  assert abs(blurred.size / s.size - 0.3) < 0.02
  assert blurred.min() >= 1.0 and blurred.max() <= 2.0
  assert abs(blurred.mean() - 1.5) < 0.02


def test_bad_inputs_raise_clear_errors():
  x = _images((2, 40, 40, 3))
  with pytest.raises(ValueError, match="sigma must be finite and >= 0"):
    blur.gaussian_blur(x, -1.0)
  with pytest.raises(ValueError, match="sigma must be finite and >= 0"):
    blur.gaussian_blur(x, np.array([1.0, -0.5]))
  with pytest.raises(ValueError, match="rank 4"):
    blur.gaussian_blur(x[0], 1.0)
  with pytest.raises(ValueError, match=r"shape \(2,\)"):
    blur.gaussian_blur(x, np.array([1.0, 2.0, 3.0]))
  with pytest.raises(ValueError, match="exceeds max_sigma"):
    blur.gaussian_blur(x, 2.0, max_sigma=1.0)
  with pytest.raises(ValueError, match="mode"):
    blur.gaussian_blur(x, 1.0, mode="bogus")
  with pytest.raises(ValueError, match="max_sigma"):
    jax.jit(lambda x, s: blur.gaussian_blur(x, s))(x, jnp.ones(2))
  rng = jax.random.key(0)
  with pytest.raises(ValueError, match="prob"):
    augment.random_blur(rng, x, 1.5, 0.5, 1.0)
  with pytest.raises(ValueError, match="sigma_min"):
    augment.random_blur(rng, x, 0.5, 2.0, 1.0)
  with pytest.raises(ValueError, match="rank 4"):
    augment.random_blur(rng, x[0], 0.5, 0.5, 1.0)
