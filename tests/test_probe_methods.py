"""kNN, SimpleShot, N-shot episodes and the few-shot logistic standardisation, each against a
straightforward numpy reference on small random features."""
import numpy as np
import pytest
from scipy import stats

from cellvit_jax.engine import knn, logistic, simpleshot
from cellvit_jax.modes import few_shot


def _features(seed, n, d=12, classes=4, sep=1.0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, n)
  centres = rng.normal(size=(classes, d)) * sep
  return (centres[y] + rng.normal(size=(n, d)) + 0.5).astype(np.float32), y


def _knn_reference(train_x, train_y, queries, k, num_classes):
  """Brute force: cosine similarity to every training row, the k largest, a majority vote with
  ties to the larger summed similarity."""
  out = []
  for q in np.asarray(queries, np.float64):
    sims = [float(q @ t / (np.linalg.norm(q) * np.linalg.norm(t)))
            for t in train_x.astype(np.float64)]
    order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
    counts, sums = [0] * num_classes, [0.0] * num_classes
    for i in order:
      counts[train_y[i]] += 1
      sums[train_y[i]] += sims[i]
    out.append(max(range(num_classes), key=lambda c: (counts[c], sums[c])))
  return np.array(out)


@pytest.mark.parametrize("k", [1, 4, 7, 30])
def test_knn_matches_brute_force(k, monkeypatch):
  train_x, train_y = _features(0, 30)
  queries, _ = _features(1, 25)
  # A chunk smaller than the queries: the padded last chunk must not change a prediction.
  monkeypatch.setattr(knn, "_CHUNK_ELEMENTS", 30 * 7)
  got = knn.predict(train_x, train_y, queries, 4, [k])[k]
  np.testing.assert_array_equal(got, _knn_reference(train_x, train_y, queries, k, 4))


def test_knn_even_k_tie_goes_to_the_more_similar_class():
  train_x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], np.float32)
  train_y = np.array([0, 0, 1, 1])
  # k = 4: two votes each; the query is closer to class 1's pair.
  assert knn.predict(train_x, train_y, np.array([[0.2, 1.0]], np.float32), 2, [4])[4][0] == 1
  assert knn.predict(train_x, train_y, np.array([[1.0, 0.2]], np.float32), 2, [4])[4][0] == 0


def test_knn_k_chosen_on_val_from_the_usable_grid():
  train_x, train_y = _features(2, 40)
  val_x, val_y = _features(3, 60)
  k, scores = knn.fit_with_validation(train_x, train_y, val_x, val_y, 4, (1, 5, 20, 50))
  assert sorted(scores) == [1, 5, 20]  # 50 > 40 training features: left out
  for kk, acc in scores.items():
    assert acc == np.mean(_knn_reference(train_x, train_y, val_x, kk, 4) == val_y)
  assert scores[k] == max(scores.values())
  assert knn.usable_ks((5, 10), 4) == (4,)  # 1-shot x 4 classes: the whole support set


def _simpleshot_reference(train_x, train_y, queries, num_classes):
  mean = train_x.astype(np.float64).mean(axis=0)
  norm = lambda v: (v - mean) / np.linalg.norm(v - mean)
  z = [norm(v) for v in train_x.astype(np.float64)]
  centroids = {c: np.mean([z[i] for i in range(len(z)) if train_y[i] == c], axis=0)
               for c in range(num_classes) if (train_y == c).any()}
  return np.array([min(centroids, key=lambda c: np.linalg.norm(norm(q) - centroids[c]))
                   for q in queries.astype(np.float64)])


@pytest.mark.parametrize("classes_present", [4, 3])
def test_simpleshot_matches_nearest_centroid_reference(classes_present):
  train_x, train_y = _features(4, 40, classes=classes_present)
  queries, _ = _features(5, 30)
  got = simpleshot.predict(simpleshot.fit(train_x, train_y, 4), queries, chunk=7)
  np.testing.assert_array_equal(got, _simpleshot_reference(train_x, train_y, queries, 4))
  assert set(got) <= set(range(classes_present))  # an absent class is never predicted


def test_episodes_are_deterministic_balanced_and_without_replacement():
  labels = np.repeat(np.arange(4), [10, 7, 9, 12])
  a = few_shot.sample(labels, 4, 4, seed=0, episode=3)
  np.testing.assert_array_equal(a, few_shot.sample(labels, 4, 4, seed=0, episode=3))
  assert len(set(a)) == 16 and np.array_equal(np.bincount(labels[a]), [4, 4, 4, 4])
  others = [few_shot.sample(labels, 4, 4, seed=s, episode=e) for s, e in ((0, 4), (1, 3))]
  assert all(not np.array_equal(a, o) for o in others)


def test_check_shots_names_the_key_and_the_largest_valid_value():
  with pytest.raises(ValueError, match=r"config.probe.shots=8 .*'b' \(7\).*shots=7 or less"):
    few_shot.check_shots(8, [10, 7, 9], ["a", "b", "c"])
  few_shot.check_shots(7, [10, 7, 9], ["a", "b", "c"])


def test_interval_is_the_t_interval_of_the_mean():
  v = [0.5, 0.7, 0.6, 0.9, 0.65]
  got = few_shot.interval(v)
  low, high = stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=stats.sem(v))
  assert got["mean"] == pytest.approx(np.mean(v))
  assert (got["low"], got["high"]) == pytest.approx((low, high))
  assert few_shot.interval([0.4])["low"] is None


def test_few_shot_logistic_floor_bounds_a_constant_feature():
  x, y = _features(6, 4)
  x[:, 0] = 3.0  # constant over the 1-shot support set
  _, std = logistic.standardize_stats(x, min_std_ratio=0.1)
  assert std[0] == pytest.approx(0.1 * np.mean(x.std(axis=0) + 1e-6))  # floored, not 1e-6
  np.testing.assert_array_equal(std[1:], x[:, 1:].std(axis=0) + 1e-6)  # the others as before
  mean0, std0 = logistic.standardize_stats(x)
  np.testing.assert_array_equal(std0, x.std(axis=0) + 1e-6)  # the default is unchanged
  head, _, _ = logistic.fit_with_validation((x - mean0) / std, y, (x - mean0) / std, y, 4,
                                            (1e-3,), 100)
  assert all(np.isfinite(np.asarray(a)).all() for a in head)
  np.testing.assert_array_equal(logistic.predict(head, (x - mean0) / std), y)
