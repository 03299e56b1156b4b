"""The realism two-sample tool: near chance on real vs real, near 1 on real vs trivially fake."""
import numpy as np
import pytest
from PIL import Image
from skimage import color, data

from cellvit_jax.data import synthetic_cells
from cellvit_jax.experiments import realism


@pytest.fixture(scope="module")
def real():
  return realism.real_crops()


def test_real_crops_are_centred_on_nuclei(real):
  assert real.dtype == np.uint8 and real.shape[1:] == (40, 40, 3) and len(real) > 300
  # Independent check: haematoxylin OD at the crop centre exceeds the image's median.
  h_image = np.median(color.rgb2hed(data.immunohistochemistry())[..., 0])
  h_centre = np.array([color.rgb2hed(c[18:22, 18:22])[..., 0].mean() for c in real])
  assert np.mean(h_centre > h_image) > 0.9
  # Deterministic: the same seed draws the same crops.
  np.testing.assert_array_equal(realism.real_crops(50, seed=3), realism.real_crops(50, seed=3))


def test_two_halves_of_real_crops_are_indistinguishable(real):
  order = np.random.default_rng(0).permutation(len(real))
  half = len(real) // 2
  f = realism.features(real[order])
  acc = realism.two_sample_accuracy(f[:half], f[half:2 * half])
  assert 0.35 < acc < 0.65, acc


def test_white_images_are_told_apart(real):
  rng = np.random.default_rng(0)
  white = np.clip(250 + rng.normal(0, 2, (len(real), 40, 40, 3)), 0, 255).astype(np.uint8)
  acc = realism.two_sample_accuracy(realism.features(real), realism.features(white))
  assert acc > 0.97, acc


def test_features_against_numpy(real):
  f = realism.features(real[:5])
  assert f.shape == (5, len(realism.FEATURE_NAMES))
  grey = real[:5].astype(np.float64).mean(-1) / 255
  np.testing.assert_allclose(f[:, 7], np.median(grey.reshape(5, -1), axis=1))
  np.testing.assert_allclose(f[:, 10], (grey > 0.85).reshape(5, -1).mean(1))


def test_recipe_patches_and_montage(tmp_path, real):
  images, labels = realism.synthetic_patches("synthetic_cells_v3", 40)
  assert images.shape == (40, 40, 40, 3) and set(labels.tolist()) == {0, 1, 2, 3}
  path = str(tmp_path / "m.png")
  realism.montage(real, images, labels, synthetic_cells.CLASS_NAMES, path, per_row=4, scale=1)
  canvas = np.asarray(Image.open(path).convert("RGB"))
  assert canvas.shape == (5 * 42, 90 + 4 * 42, 3)
  np.testing.assert_array_equal(canvas[:40, 90:130], real[0])
  np.testing.assert_array_equal(canvas[42:82, 90:130], images[labels == 0][0])
