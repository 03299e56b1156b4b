"""ops/perturb.py against independent implementations (PIL, scikit-image, numpy)."""
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage import color as skcolor
from skimage import data as skdata
from skimage import transform

from cellvit_jax.ops import perturb


def _patches(n=4, size=40):
  """Natural 40x40 patches (textured, smooth and edged regions) from skimage's astronaut."""
  img = skdata.astronaut()
  corners = [(100, 200), (30, 300), (250, 120), (400, 400), (180, 50), (300, 300)][:n]
  return np.stack([img[y:y + size, x:x + size] for y, x in corners])


def _keys(n, seed=0):
  return jax.random.split(jax.random.key(seed), n)


def test_zero_strength_is_the_identity_for_every_perturbation():
  x = jnp.asarray(_patches(3), jnp.float32) / 255
  for name in perturb.NAMES:
    out = perturb.apply(name, x, jnp.zeros(3), _keys(3))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x), err_msg=name)


@pytest.mark.parametrize("degrees", [7.5, 30.0, 45.0, -20.0, 123.0])
def test_rotation_matches_skimage_rotate_bilinear_symmetric(degrees):
  x = _patches(2).astype(np.float32) / 255
  out = np.asarray(perturb.apply("rotation", jnp.asarray(x), jnp.full(2, degrees), _keys(2)))
  for i in range(2):
    ref = transform.rotate(x[i].astype(np.float64), degrees, order=1, mode="symmetric")
    np.testing.assert_allclose(out[i], ref, atol=1e-5)


def test_rotation_per_sample_angles_and_non_square_batch():
  x = np.random.default_rng(1).random((3, 24, 24, 3)).astype(np.float32)
  angles = np.array([10.0, 0.0, 60.0], np.float32)
  out = np.asarray(perturb.apply("rotation", jnp.asarray(x), jnp.asarray(angles), _keys(3)))
  np.testing.assert_array_equal(out[1], x[1])
  for i in (0, 2):
    ref = transform.rotate(x[i].astype(np.float64), angles[i], order=1, mode="symmetric")
    np.testing.assert_allclose(out[i], ref, atol=1e-5)


@pytest.mark.parametrize("quality", [10, 37, 50, 75, 95])
def test_jpeg_quant_tables_are_the_ones_pil_writes(quality):
  buf = io.BytesIO()
  Image.fromarray(_patches(1)[0]).save(buf, format="JPEG", quality=quality)
  pil = Image.open(buf)
  luma, chroma = perturb.quant_tables(jnp.asarray([quality], jnp.float32))
  np.testing.assert_array_equal(np.asarray(luma[0]).ravel(), pil.quantization[0])
  np.testing.assert_array_equal(np.asarray(chroma[0]).ravel(), pil.quantization[1])
  assert pil.layer[0][1:3] == (2, 2)  # PIL's default is 4:2:0, as ours


def _pil_jpeg(img, quality):
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, format="JPEG", quality=quality)
  return np.asarray(Image.open(buf)).astype(np.float64)


@pytest.mark.parametrize("quality", [95, 75, 50, 30, 10])
def test_jpeg_is_close_to_pil_at_the_same_quality(quality):
  # Tolerance: libjpeg codes with integer DCTs (islow), integer colour conversion with its
  # own rounding and biased chroma downsampling; ours does the same steps in float32, so
  # single coefficients can round to the neighbouring quantisation bin. Measured on these
  # patches the mean |ours - PIL| is 0.5-1.1 grey levels against 2.4-8.4 for JPEG's own
  # error: we ask for < 1.5 levels, < 40% of PIL's error where that error is large (quality
  # <= 75; at 95 it is ~1-2 levels, the size of the rounding differences themselves), and
  # that ours is nearer PIL at this quality than PIL at any other quality of the grid (the
  # quality scaling is right).
  imgs = _patches(4)
  ours = np.asarray(perturb.apply("jpeg", jnp.asarray(imgs, jnp.float32) / 255,
                                  jnp.full(4, float(quality)), _keys(4))) * 255
  for img, out in zip(imgs, ours):
    pil = _pil_jpeg(img, quality)
    diff = np.abs(out - pil).mean()
    assert diff < 1.5, diff
    if quality <= 75:
      assert diff < 0.4 * np.abs(pil - img).mean()
    for other in (95, 75, 50, 30, 10):
      if other != quality:
        assert diff < np.abs(out - _pil_jpeg(img, other)).mean(), other
  # Output is 8-bit (to float32 rounding of k / 255 * 255).
  np.testing.assert_allclose(ours, np.round(ours), atol=1e-4)


def test_jpeg_keeps_an_8x8_aligned_flat_image():
  x = np.full((1, 16, 16, 3), [200, 120, 40], np.uint8)
  out = np.asarray(perturb.apply("jpeg", jnp.asarray(x, jnp.float32) / 255, jnp.full(1, 50.0),
                                 _keys(1))) * 255
  np.testing.assert_allclose(out, _pil_jpeg(x[0], 50)[None], atol=1.0)


def _stained(n, size=24, seed=0):
  """Stained-tissue-like patches: non-negative H, E, D amounts through skimage.hed2rgb."""
  hed = np.random.default_rng(seed).uniform(0.0, 0.08, (n, size, size, 3))
  return np.stack([skcolor.hed2rgb(h) for h in hed]).astype(np.float32)


def test_hed_matches_skimage_deconvolution_with_the_drawn_factors():
  x = _stained(3)
  keys = _keys(3, seed=5)
  s = np.array([0.1, 0.3, 0.5], np.float32)
  out = np.asarray(perturb.apply("hed", jnp.asarray(x), jnp.asarray(s), keys))
  for i in range(3):
    ka, kb = jax.random.split(keys[i])
    alpha = 1 + s[i] * np.asarray(jax.random.uniform(ka, (3,), jnp.float32, -1.0, 1.0))
    beta = 0.1 * s[i] * np.asarray(jax.random.uniform(kb, (3,), jnp.float32, -1.0, 1.0))
    assert np.all((alpha >= 1 - s[i]) & (alpha <= 1 + s[i]))
    # skimage clips negative stains at 0, ours does not (an exact round trip); these
    # patches' stains are >= 0 up to float32 rounding, where the two agree.
    ref = skcolor.hed2rgb(skcolor.rgb2hed(x[i].astype(np.float64)) * alpha + beta)
    np.testing.assert_allclose(out[i], ref, atol=2e-4)
  assert np.abs(out - x).max() > 0.01


def test_brightness_contrast_and_noise_against_numpy():
  # Natural patches plus a mid-grey-dominated one, where noise is rarely clipped.
  x = _patches(4).astype(np.float32) / 255
  x = 0.5 * x + 0.25
  keys = _keys(4, seed=2)
  s = np.array([0.2, 0.4, 0.1, 0.5], np.float32)
  signs = np.where(np.asarray(jax.vmap(jax.random.bernoulli)(keys)), 1.0, -1.0)
  assert len(set(signs)) == 2  # both directions occur in the batch

  out = np.asarray(perturb.apply("brightness", jnp.asarray(x), jnp.asarray(s), keys))
  f = (1 + signs * s)[:, None, None, None]
  np.testing.assert_allclose(out, np.clip(x * f, 0, 1), atol=1e-6)

  out = np.asarray(perturb.apply("contrast", jnp.asarray(x), jnp.asarray(s), keys))
  grey = (x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])).mean(axis=(1, 2))
  m = grey[:, None, None, None]
  np.testing.assert_allclose(out, np.clip(m + f * (x - m), 0, 1), atol=1e-5)

  # Noise: the drawn standard normals (same keys) scaled and clipped, and their spread is s.
  sn = np.array([0.02, 0.05, 0.08, 0.1], np.float32)
  out = np.asarray(perturb.apply("noise", jnp.asarray(x), jnp.asarray(sn), keys))
  z = np.stack([np.asarray(jax.random.normal(k, x.shape[1:], jnp.float32)) for k in keys])
  np.testing.assert_allclose(out, np.clip(x + sn[:, None, None, None] * z, 0, 1), atol=1e-6)
  for i in range(4):
    d = out[i] - x[i]
    assert abs(d.std() / sn[i] - 1) < 0.05, (i, d.std(), sn[i])
    assert abs(d.mean()) < 0.1 * sn[i]


def test_content_keys_depend_on_the_image_not_the_batch():
  imgs = jnp.asarray(_patches(4))
  a = perturb.apply("noise", imgs.astype(jnp.float32) / 255, jnp.full(4, 0.1),
                    perturb.content_keys(0, imgs))
  perm = jnp.asarray([2, 0, 3, 1])
  b = perturb.apply("noise", imgs[perm].astype(jnp.float32) / 255, jnp.full(4, 0.1),
                    perturb.content_keys(0, imgs[perm]))
  np.testing.assert_array_equal(np.asarray(a)[np.asarray(perm)], np.asarray(b))
  c = perturb.apply("noise", imgs.astype(jnp.float32) / 255, jnp.full(4, 0.1),
                    perturb.content_keys(1, imgs))
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 0.05  # the seed matters


def test_perturbations_run_under_jit_with_traced_strength():
  x = jnp.asarray(_patches(2), jnp.float32) / 255
  for name in perturb.NAMES:
    f = jax.jit(lambda im, s, n=name: perturb.apply(n, im, s, _keys(2)))
    eager = perturb.apply(name, x, jnp.asarray([0.3, 0.0]) * (100 if name == "jpeg" else 1),
                          _keys(2))
    jitted = f(x, jnp.asarray([0.3, 0.0]) * (100 if name == "jpeg" else 1))
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), atol=1e-5, err_msg=name)


def test_unknown_perturbation_is_named():
  with pytest.raises(ValueError, match="unknown perturbation 'blurr'"):
    perturb.apply("blurr", jnp.zeros((1, 8, 8, 3)), jnp.zeros(1), _keys(1))
