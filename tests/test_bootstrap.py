"""bootstrap: vectorised 95% intervals against a plain loop over the same resamples scored by
scikit-learn; paired differences; the interval's basic properties."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from cellvit_jax import bootstrap


def _sample(n, k, acc, seed):
  rng = np.random.default_rng(seed)
  labels = rng.choice(k, size=n, p=np.r_[np.full(k - 1, 0.97 / (k - 1)), 0.03])  # a rare class
  preds = np.where(rng.random(n) < acc, labels, rng.integers(0, k, n))
  return labels, preds


def _sklearn_scores(labels, preds):
  present = np.unique(labels)  # the classes present, as metrics.from_confusion averages over
  return {"accuracy": accuracy_score(labels, preds),
          "balanced_accuracy": balanced_accuracy_score(labels, preds),
          "macro_f1": f1_score(labels, preds, labels=present, average="macro", zero_division=0)}


def _reference(labels, preds_list, resamples, seed, level=0.95):
  """A loop over the rows of the same index matrix, each resample scored by scikit-learn."""
  idx = np.concatenate(list(bootstrap.index_chunks(len(labels), resamples, seed)))
  assert idx.shape == (resamples, len(labels))
  return [{m: np.array([_sklearn_scores(labels[i], preds[i])[m] for i in idx])
           for m in bootstrap.METRICS} for preds in preds_list]


@pytest.fixture
def small_chunks(monkeypatch):
  monkeypatch.setattr(bootstrap, "_CHUNK_ELEMENTS", 1000)  # many chunks of index rows


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_intervals_match_a_sklearn_loop_over_the_same_resamples(small_chunks):
  labels, preds = _sample(60, 4, 0.7, seed=1)  # the rare class is absent from some resamples
  resamples = 60  # scikit-learn's per-call checks make the loop the slow part
  idx = np.concatenate(list(bootstrap.index_chunks(len(labels), resamples, seed=5)))
  assert 0 < sum(3 not in labels[i] for i in idx) < resamples  # the absent-class case is met
  (ref,) = _reference(labels, [preds], resamples, seed=5)
  got = bootstrap.resampled_metrics(labels, [preds], 4, resamples, seed=5)[0]
  for m in bootstrap.METRICS:
    np.testing.assert_allclose(got[m], ref[m], rtol=0, atol=1e-12)
  out = bootstrap.intervals(labels, preds, 4, resamples=resamples, seed=5)
  for m in bootstrap.METRICS:
    np.testing.assert_allclose(out[f"{m}_ci95"], np.percentile(ref[m], [2.5, 97.5]), atol=1e-12)
  assert set(out) == {"accuracy_ci95", "balanced_accuracy_ci95", "macro_f1_ci95"}


def test_chunked_draws_equal_one_draw(small_chunks):
  chunks = list(bootstrap.index_chunks(70, 100, seed=3))
  assert len(chunks) > 1
  one = np.random.default_rng(3).integers(0, 70, size=(100, 70))
  np.testing.assert_array_equal(np.concatenate(chunks), one)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_paired_difference_matches_the_loop_and_vanishes_for_identical_runs():
  labels, preds_a = _sample(50, 3, 0.9, seed=2)
  _, preds_b = _sample(50, 3, 0.6, seed=3)
  ref_a, ref_b = _reference(labels, [preds_a, preds_b], 40, seed=bootstrap.SEED)
  out = bootstrap.paired(labels, preds_a, preds_b, 3, resamples=40)
  for m in bootstrap.METRICS:
    point_a, point_b = (_sklearn_scores(labels, p)[m] for p in (preds_a, preds_b))
    assert out[m]["a"] == pytest.approx(point_a) and out[m]["b"] == pytest.approx(point_b)
    assert out[m]["difference"] == pytest.approx(point_a - point_b)
    np.testing.assert_allclose(out[m]["ci"], np.percentile(ref_a[m] - ref_b[m], [2.5, 97.5]),
                               atol=1e-12)
  same = bootstrap.paired(labels, preds_a, preds_a, 3)
  assert all(same[m]["ci"] == [0.0, 0.0] for m in bootstrap.METRICS)


def test_interval_holds_the_point_and_narrows_as_one_over_sqrt_n():
  widths = []
  for n in (400, 1600, 6400):
    labels, preds = _sample(n, 3, 0.8, seed=n)
    out = bootstrap.intervals(labels, preds, 3)
    point = _sklearn_scores(labels, preds)
    for m in ("accuracy", "balanced_accuracy"):
      lo, hi = out[f"{m}_ci95"]
      assert lo < point[m] < hi
    widths.append(out["accuracy_ci95"][1] - out["accuracy_ci95"][0])
  ratios = np.array(widths[:-1]) / np.array(widths[1:])  # 4x the examples: half the width
  assert np.all((ratios > 1.7) & (ratios < 2.3)), ratios


def test_same_inputs_same_interval_and_bad_inputs_named():
  labels, preds = _sample(30, 2, 0.8, seed=0)
  assert bootstrap.intervals(labels, preds, 2) == bootstrap.intervals(labels, preds, 2)
  assert bootstrap.intervals([], [], 2) == {}
  with pytest.raises(ValueError, match="same length"):
    bootstrap.intervals(labels, preds[:-1], 2)
  with pytest.raises(ValueError, match=r"predictions must lie in \[0, 2\)"):
    bootstrap.intervals(labels, preds + 2, 2)
