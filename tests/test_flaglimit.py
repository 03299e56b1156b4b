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
