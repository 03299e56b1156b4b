"""k-nearest-neighbour classification of fixed features by cosine similarity, k chosen on val.

The vote is a plain majority of the k most similar training features (as UNI's and
THUNDER's kNN evaluations use); a tie in the count goes to the tied class whose neighbours
are more similar in sum.  Similarities are computed in fixed-size query chunks on the
device (a jitted matmul + top_k), so memory stays at chunk x num_train floats however
large the split.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_K_GRID = (1, 5, 10, 20, 50)
_CHUNK_ELEMENTS = 1 << 24  # similarities held at once: 64 MiB of float32


def l2_normalize(x):
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnums=(2,))
def _top_k(queries, train, k: int):
  return jax.lax.top_k(queries @ train.T, k)


def neighbours(train_x, queries, k: int):
  """(similarities, indices), each (num_queries, k), most similar first: cosine similarity of
  every query to every training feature, in chunks padded to one shape (one compilation)."""
  train = jnp.asarray(l2_normalize(train_x))
  q = l2_normalize(queries)
  k = min(int(k), len(train_x))
  chunk = int(max(1, min(len(q), _CHUNK_ELEMENTS // max(1, len(train_x)))))
  sims, idx = [], []
  for start in range(0, len(q), chunk):
    block = q[start:start + chunk]
    padded = np.zeros((chunk, q.shape[1]), np.float32)
    padded[:len(block)] = block
    s, i = jax.device_get(_top_k(jnp.asarray(padded), train, k))
    sims.append(np.asarray(s)[:len(block)])
    idx.append(np.asarray(i)[:len(block)])
  if not sims:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
  return np.concatenate(sims), np.concatenate(idx)


def vote(neighbour_labels, neighbour_sims, num_classes: int):
  """Majority class of each row's neighbours; ties in the count go to the larger summed
  similarity.  (N, k) labels and similarities -> (N,) predictions."""
  k = neighbour_labels.shape[1]
  score = np.empty((len(neighbour_labels), num_classes))
  for c in range(num_classes):  # one (N, k) mask at a time: memory N x k, not N x k x C
    is_c = neighbour_labels == c
    sim_sum = np.where(is_c, neighbour_sims, 0.0).sum(axis=1, dtype=np.float64)  # in [-k, k]
    # The summed similarity mapped into [0, 1) breaks ties without overturning a count.
    score[:, c] = is_c.sum(axis=1) + (sim_sum + k) / (2 * k + 1)
  return np.argmax(score, axis=1)


def predict(train_x, train_y, queries, num_classes: int, ks):
  """{k: (num_queries,) predictions} for every k in `ks` (each at most len(train_x)), from one
  neighbour search at the largest k."""
  ks = sorted({int(k) for k in ks})
  sims, idx = neighbours(train_x, queries, ks[-1])
  labels = np.asarray(train_y)[idx]
  return {k: vote(labels[:, :k], sims[:, :k], num_classes) for k in ks}


def usable_ks(k_grid, num_train: int):
  """The grid's k that a training set of num_train features allows (at least k=num_train)."""
  ks = sorted({int(k) for k in k_grid if int(k) <= num_train})
  return tuple(ks) or (int(num_train),)


def fit_with_validation(train_x, train_y, val_x, val_y, num_classes: int,
                        k_grid=DEFAULT_K_GRID):
  """(chosen k, {k: val accuracy}): the k of the grid with the best val accuracy (ties: the
  larger k, the smoother vote)."""
  ks = usable_ks(k_grid, len(train_x))
  preds = predict(train_x, train_y, val_x, num_classes, ks)
  scores = {k: float(np.mean(p == np.asarray(val_y))) for k, p in preds.items()}
  best = max(ks, key=lambda k: (scores[k], k))
  return best, scores
