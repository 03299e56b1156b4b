import numpy as np
import pytest

from cellvit_jax.data import flaglimit


def _labels():
  rng = np.random.default_rng(0)
  labels = np.concatenate([np.full(n, c) for c, n in enumerate([500, 300, 40, 1000])])
  return labels[rng.permutation(1840)]


def test_exact_per_class_counts_and_small_classes_keep_all():
  labels = _labels()
  idx = flaglimit.select(labels, 100, seed=0)
  assert flaglimit.counts(labels, idx, 4).tolist() == [100, 100, 40, 100]
  assert len(set(idx.tolist())) == len(idx)


def test_same_seed_same_subset_other_seed_other_subset():
  labels = _labels()
  a = flaglimit.select(labels, 100, seed=0)
  assert np.array_equal(a, flaglimit.select(labels, 100, seed=0))
  assert not np.array_equal(a, flaglimit.select(labels, 100, seed=1))


def test_subsets_are_nested_across_scales():
  labels = _labels()
  small = set(flaglimit.select(labels, 64, seed=3).tolist())
  big = set(flaglimit.select(labels, 128, seed=3).tolist())
  assert small < big


@pytest.mark.parametrize("bad", [0, -5, 2.5, "256", True])
def test_bad_flaglimit_is_refused(bad):
  with pytest.raises(ValueError, match="FlagLimit"):
    flaglimit.select([0, 1], bad, seed=0)


class _Dataset:
  """What training_subset reads of a dataset: train labels, class names and count."""
  class_names = ["a", "b", "c", "d"]
  num_classes = 4

  def labels(self, split):
    assert split == "train"
    return _labels()


def test_training_subset_is_select_and_says_which_classes_it_caps():
  cfg = type("DatasetConfig", (), {"train_split": "train", "flaglimit": 100})()
  lines = []
  indices, counts = flaglimit.training_subset(_Dataset(), cfg, seed=2,
                                              log=lambda fmt, *a: lines.append(fmt % a))
  assert np.array_equal(indices, flaglimit.select(_labels(), 100, seed=2))
  assert counts.tolist() == [100, 100, 40, 100]
  assert "340 training patches" in lines[0]
  assert lines[1].startswith("FlagLimit 100 leaves out training patches of a, b, d")
  assert "{'a': 500, 'b': 300, 'd': 1000}" in lines[1] and "--config.dataset.flaglimit" in lines[1]
  cfg.flaglimit = 1000
  lines.clear()
  flaglimit.training_subset(_Dataset(), cfg, seed=2, log=lambda fmt, *a: lines.append(fmt % a))
  assert len(lines) == 1  # nothing capped: no second line
