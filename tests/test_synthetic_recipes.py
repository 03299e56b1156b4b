"""The synthetic_cells recipes: v2 unchanged, v3 deterministic and labelled by its centre cell."""
import hashlib
import json
import os

import numpy as np
import pytest
from skimage import color

from cellvit_jax.data import datasets, synthetic_cells, synthetic_cells_v3, tfds_writer

# sha256 of generate_specimen's images (and the first 16 hex digits of its labels), taken
# from the recipe-2 renderer before recipe 3 existed: (seed, specimen, cells_per_specimen).
V2_HASHES = {
    (0, 0, 40): ("af84ea562a7ed8c13621a9d13468689ff994559508a0c0094c188e3567e3f254",
                 "dc15684fb17653cd"),
    (0, 3, 40): ("3e3bf1102497e7c52d3362b4e030397bf1ce1479ca6321f199baeea8173a535a",
                 "9d9148b80bc8d467"),
    (5, 1, 24): ("350694e34c1cda15e3f06aee59e6fae15b9442330213c78bbfc32d4406fbd2d7",
                 "796131fa3f6e50bb"),
}


def _sha(a):
  return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.mark.parametrize("key", sorted(V2_HASHES))
def test_v2_recipe_is_byte_identical_to_before(key):
  seed, specimen, cells = key
  recipe = datasets.recipe_for("synthetic_cells_v2")
  assert recipe.RECIPE_VERSION == 2
  images, labels = recipe.generate_specimen(
      synthetic_cells.SyntheticSpec(seed=seed, cells_per_specimen=cells), specimen)
  assert (_sha(images), _sha(labels)[:16]) == V2_HASHES[key]


def test_names_pick_recipes():
  assert datasets.recipe_for("synthetic_cells") is synthetic_cells       # default unchanged
  assert datasets.recipe_for("synthetic_cells_small") is synthetic_cells
  assert datasets.recipe_for("synthetic_cells_v2_tiny") is synthetic_cells
  assert datasets.recipe_for("synthetic_cells_v3") is synthetic_cells_v3
  assert datasets.recipe_for("synthetic_cells_v3_small").RECIPE_VERSION == 3
  assert datasets.recipe_for("synthetic_cells_v30") is synthetic_cells   # not a v3 name


def test_v3_deterministic_by_seed_and_specimen():
  spec = synthetic_cells.SyntheticSpec(cells_per_specimen=24)
  a, la = synthetic_cells_v3.generate_specimen(spec, 2)
  b, lb = synthetic_cells_v3.generate_specimen(spec, 2)
  assert a.dtype == np.uint8 and a.shape == (24, 40, 40, 3)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(la, lb)
  assert np.bincount(la, minlength=4).tolist() == [6, 6, 6, 6]
  other, _ = synthetic_cells_v3.generate_specimen(spec, 3)
  reseeded, _ = synthetic_cells_v3.generate_specimen(
      synthetic_cells.SyntheticSpec(cells_per_specimen=24, seed=1), 2)
  assert not np.array_equal(a, other) and not np.array_equal(a, reseeded)
  # Same specimen, same seed: v3 differs from v2 (its own stream, its own renderer).
  v2, _ = synthetic_cells.generate_specimen(spec, 2)
  assert not np.array_equal(a, v2)


def test_v3_examples_do_not_depend_on_workers():
  spec = synthetic_cells.SyntheticSpec(num_specimens=5, cells_per_specimen=8, val_specimens=1,
                                       test_specimens=1)
  one = list(synthetic_cells_v3.examples(spec, "train", workers=1))
  two = list(synthetic_cells_v3.examples(spec, "train", workers=2))
  assert [e["source"] for e in one] == [e["source"] for e in two]
  for x, y in zip(one, two):
    np.testing.assert_array_equal(x["image"], y["image"])
  # The split is by specimen, and the examples are v3's renderings of those specimens.
  first = int(one[0]["source"].split(":")[1])
  images, _ = synthetic_cells_v3.generate_specimen(spec, first)
  np.testing.assert_array_equal(one[0]["image"], images[0])


def _stain_concentrations(images):
  """Per-pixel (haematoxylin, DAB, red) by skimage's colour deconvolution with the nominal
  stain vectors (the independent reference for what the renderer put where)."""
  stains = np.stack([synthetic_cells_v3._HEMATOXYLIN, synthetic_cells_v3._DAB,
                     synthetic_cells_v3._RED])
  stains = stains / np.linalg.norm(stains, axis=1, keepdims=True)
  return color.separate_stains(images, np.linalg.inv(stains))


def test_v3_label_is_the_centre_cells_membrane_chromogens():
  spec = synthetic_cells.SyntheticSpec(cells_per_specimen=240)
  images, labels = zip(*(synthetic_cells_v3.generate_specimen(spec, s) for s in range(2)))
  images, labels = np.concatenate(images), np.concatenate(labels)
  conc = _stain_concentrations(images)
  yy, xx = np.mgrid[:40, :40]
  r = np.hypot(yy - 19.5, xx - 19.5)
  centre = r < 7.5                     # the centre cell and its membrane
  outside = r > 12                     # neighbourhood: neighbours of random phenotype
  cd103 = np.isin(labels, [0, 1])      # CLASS_NAMES order
  cd8 = np.isin(labels, [0, 2])
  for channel, positive in ((1, cd8), (2, cd103)):
    inner = conc[:, centre, channel].mean(axis=1)
    outer = conc[:, outside, channel].mean(axis=1)
    # Positive centre cells carry clearly more of their chromogen than negative ones...
    gap = inner[positive].mean() - inner[~positive].mean()
    assert gap > 0.5 * inner[~positive].std(), (channel, gap)
    # ...while the neighbourhood does not tell the class (stained neighbours are random).
    outer_gap = outer[positive].mean() - outer[~positive].mean()
    assert abs(outer_gap) < 0.25 * gap, (channel, outer_gap, gap)


def test_v3_builds_by_name_and_records_its_recipe(tmp_path):
  spec = synthetic_cells.SyntheticSpec(num_specimens=4, cells_per_specimen=8, val_specimens=1,
                                       test_specimens=1)
  ds = datasets.open_dataset("synthetic_cells_v3_tiny", str(tmp_path), synthetic=spec,
                             log=lambda *_: None)
  assert ds.meta["info"]["recipe_version"] == 3
  meta_path = os.path.join(ds.path, tfds_writer.META_FILE)
  meta = json.load(open(meta_path))
  meta["info"]["recipe_version"] = 2
  with open(meta_path, "w") as f:
    json.dump(meta, f)
  with pytest.raises(ValueError, match="another synthetic_cells recipe"):
    datasets.open_dataset("synthetic_cells_v3_tiny", str(tmp_path), synthetic=spec)


def test_v3_jpeg_like_is_blockwise_dct_quantisation():
  from scipy.fft import dctn, idctn
  rng = np.random.default_rng(0)
  x = rng.random((3, 40, 40, 3), dtype=np.float32)
  step = 0.05
  out = synthetic_cells_v3._jpeg_like(x, step)
  y = x.mean(-1)
  blocks = y.reshape(3, 5, 8, 5, 8).transpose(0, 1, 3, 2, 4)
  i = np.arange(8)
  q = step * (1 + (i[:, None] + i[None]) / 2)
  ref = idctn(np.round(dctn(blocks, axes=(-2, -1), norm="ortho") / q) * q, axes=(-2, -1),
              norm="ortho").transpose(0, 1, 3, 2, 4).reshape(3, 40, 40)
  # Only luminance changes, by what the quantisation removed; colour differences stay.
  np.testing.assert_allclose(out - x, np.repeat((ref - y)[..., None], 3, -1), atol=1e-5)
  assert np.abs(out - x).max() > step / 10
