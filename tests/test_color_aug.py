"""ops/color.py: RGB <-> HED against skimage, HED stain jitter and colour jitter."""
import jax
import numpy as np
import pytest
import skimage.color
import skimage.data

from cellvit_jax.ops import color


@pytest.fixture(scope="module")
def ihc_crops():
  """16 real H-DAB 40x40 crops (skimage's colon IHC image), float32 in [0, 1]."""
  img = skimage.data.immunohistochemistry().astype(np.float32) / 255.0
  return np.stack([img[y:y + 40, x:x + 40] for y in range(0, 480, 120)
                   for x in range(0, 480, 120)])


def _random_rgb(shape=(4, 40, 40, 3), seed=0):
  x = np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)
  x[0, 0, 0] = 0.0  # the floor of the log
  x[0, 0, 1] = 1.0
  return x


# --- conversions ------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["random", "ihc"])
def test_rgb_to_hed_equals_skimage_rgb2hed(which, ihc_crops):
  x = _random_rgb() if which == "random" else ihc_crops
  ours = np.asarray(color.rgb_to_hed(x))
  # skimage clips negative stains to 0; ours keeps them (so the round trip is exact).
  np.testing.assert_allclose(np.maximum(ours, 0), skimage.color.rgb2hed(x.astype(np.float64)),
                             rtol=0, atol=2e-6)
  assert ours.dtype == np.float32


def test_hed_to_rgb_equals_skimage_hed2rgb():
  hed = np.random.default_rng(1).normal(0, 0.15, (3, 40, 40, 3))
  ours = np.asarray(color.hed_to_rgb(hed.astype(np.float32)))
  np.testing.assert_allclose(ours, skimage.color.hed2rgb(hed), rtol=0, atol=2e-6)


@pytest.mark.parametrize("which", ["random", "ihc"])
def test_rgb_hed_round_trip_is_the_identity_to_float32_rounding(which, ihc_crops):
  x = np.maximum(_random_rgb() if which == "random" else ihc_crops, 1e-6)  # above the floor
  back = np.asarray(color.hed_to_rgb(color.rgb_to_hed(x)))
  np.testing.assert_allclose(back, x, rtol=0, atol=1e-5)
  # Unit factors and no shift: the same.
  ones, zeros = np.ones((x.shape[0], 3), np.float32), np.zeros((x.shape[0], 3), np.float32)
  np.testing.assert_allclose(np.asarray(color.hed_jitter(x, ones, zeros)), x, rtol=0, atol=1e-5)


def test_hed_jitter_moves_each_stain_by_its_own_alpha_and_beta(ihc_crops):
  x = ihc_crops[:4]
  alpha = np.array([[1.0, 1.0, 1.1]] * 4, np.float32)   # DAB x 1.1
  beta = np.array([[0.01, 0.0, 0.0]] * 4, np.float32)   # haematoxylin + 0.01
  out = np.asarray(color.hed_jitter(x, alpha, beta))
  before, after = np.asarray(color.rgb_to_hed(x)), np.asarray(color.rgb_to_hed(out))
  unclipped = np.all((out > 1e-5) & (out < 1 - 1e-5), axis=-1)  # no clip changed the pixel
  assert unclipped.mean() > 0.9
  expect = before * alpha[:, None, None] + beta[:, None, None]
  np.testing.assert_allclose(after[unclipped], expect[unclipped], rtol=0, atol=1e-4)


# --- random jitter ------------------------------------------------------------------------

HED_ON = dict(prob=1.0, scale=0.05, shift=0.01)
COLOR_ON = dict(prob=1.0, brightness=0.2, contrast=0.2, saturation=0.2)


@pytest.mark.parametrize("fn,off", [
    (color.random_hed_jitter, dict(prob=0.0, scale=0.5, shift=0.5)),
    (color.random_hed_jitter, dict(prob=1.0, scale=0.0, shift=0.0)),
    (color.random_color_jitter, dict(prob=0.0, brightness=0.5, contrast=0.5, saturation=0.5)),
    (color.random_color_jitter, dict(prob=1.0, brightness=0.0, contrast=0.0, saturation=0.0)),
])
def test_off_is_the_identity_bitwise(fn, off, ihc_crops):
  rng = jax.random.key(0)
  np.testing.assert_array_equal(np.asarray(fn(rng, ihc_crops, **off)), ihc_crops)
  jitted = jax.jit(lambda r, x: fn(r, x, **off))(rng, ihc_crops)
  np.testing.assert_array_equal(np.asarray(jitted), ihc_crops)


@pytest.mark.parametrize("fn,on", [(color.random_hed_jitter, HED_ON),
                                   (color.random_color_jitter, COLOR_ON)])
def test_jitter_shape_range_determinism_and_effect(fn, on, ihc_crops):
  rng = jax.random.key(7)
  jitted = jax.jit(lambda r, x: fn(r, x, **on))
  out = np.asarray(jitted(rng, ihc_crops))
  assert out.shape == ihc_crops.shape and out.dtype == np.float32
  assert out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_array_equal(out, np.asarray(jitted(rng, ihc_crops)))  # same rng, same bits
  # Eager draws the same factors (XLA's fusion only moves the last bit).
  np.testing.assert_allclose(out, np.asarray(fn(rng, ihc_crops, **on)), rtol=0, atol=1e-6)
  assert np.abs(out - np.asarray(jitted(jax.random.key(8), ihc_crops))).max() > 1e-3
  # Every sample's per-channel mean moves, and not all by the same amount.
  shift = (out - ihc_crops).mean(axis=(1, 2))  # (B, 3)
  assert np.all(np.abs(shift).max(axis=1) > 1e-3), shift
  assert np.std(shift[:, 0]) > 1e-3


@pytest.mark.parametrize("fn,on", [(color.random_hed_jitter, HED_ON),
                                   (color.random_color_jitter, COLOR_ON)])
def test_prob_picks_samples_and_leaves_the_others_bitwise(fn, on, ihc_crops):
  x = np.concatenate([ihc_crops] * 16)  # 256 samples
  out = np.asarray(fn(jax.random.key(3), x, **{**on, "prob": 0.5}))
  changed = np.any(out != x, axis=(1, 2, 3))
  assert 0.4 < changed.mean() < 0.6
  np.testing.assert_array_equal(out[~changed], x[~changed])


def test_colour_adjustments_do_what_they_say(ihc_crops):
  x = ihc_crops[:3]
  f = np.array([0.8, 1.0, 1.2], np.float32)
  np.testing.assert_array_equal(np.asarray(color.adjust_brightness(x, f)),
                                np.asarray(np.clip(x * f[:, None, None, None], 0, 1)))
  # Lower contrast blends towards the mean grey: the mean grey stays, the spread shrinks.
  grey = lambda y: (y * np.array([0.299, 0.587, 0.114], np.float32)).sum(-1)
  low = np.asarray(color.adjust_contrast(x, np.full(3, 0.5, np.float32)))
  np.testing.assert_allclose(grey(low).mean(axis=(1, 2)), grey(x).mean(axis=(1, 2)), atol=1e-5)
  np.testing.assert_allclose(low.std(axis=(1, 2, 3)), 0.5 * x.std(axis=(1, 2, 3)), rtol=0.05)
  # Saturation 0 is the grey image: three equal channels.
  flat = np.asarray(color.adjust_saturation(x, np.zeros(3, np.float32)))
  np.testing.assert_allclose(flat, np.repeat(grey(x)[..., None], 3, -1), atol=1e-6)


@pytest.mark.parametrize("fn,kwargs,expect", [
    (color.random_hed_jitter, dict(prob=1.5, scale=0.05, shift=0.01),
     "prob=1.5 must be a finite number in [0, 1]"),
    (color.random_hed_jitter, dict(prob=0.5, scale=-0.1, shift=0.01),
     "scale=-0.1 must be a finite number in [0, 1]"),
    (color.random_color_jitter, dict(prob=0.5, brightness=0.1, contrast=float("nan"),
                                     saturation=0.1), "contrast=nan must be a finite number"),
])
def test_bad_arguments_are_named(fn, kwargs, expect, ihc_crops):
  with pytest.raises(ValueError) as e:
    fn(jax.random.key(0), ihc_crops, **kwargs)
  assert expect in str(e.value)


def test_uint8_images_are_refused():
  with pytest.raises(ValueError, match=r"float images in \[0, 1\].*normalize.to_float"):
    color.random_hed_jitter(jax.random.key(0), np.zeros((2, 8, 8, 3), np.uint8), **HED_ON)
