"""grain input pipelines: the FlagLimit training stream and padded evaluation batches.

The host only decodes, selects, shuffles and batches uint8 patches; all image maths runs
on the device inside the jitted step. The training stream is a grain MapDataset (random
access), so its iterator state is a position and checkpoints with orbax exactly.
"""
from typing import Iterator, Optional

import grain
import jax
import numpy as np


class _Selected:
  """Random-access view of `source` restricted to `indices`, yielding image + label only."""

  def __init__(self, source, indices):
    self._source = source
    self._indices = np.asarray(indices, np.int64)

  def __len__(self):
    return len(self._indices)

  def __getitem__(self, i):
    ex = self._source[int(self._indices[i])]
    return {"image": np.asarray(ex["image"], np.uint8), "label": np.int32(ex["label"])}


class _InMemory:
  """The selected subset decoded once into uint8 arrays (config.dataset.cache)."""

  def __init__(self, images, labels):
    self._images, self._labels = images, labels

  def __len__(self):
    return len(self._labels)

  def __getitem__(self, i):
    return {"image": self._images[i], "label": self._labels[i]}


def load_arrays(source, indices, chunk: int = 1024):
  """Decodes records `indices` into (images uint8 (N,H,W,3), labels int32 (N,))."""
  images, labels = [], []
  indices = [int(i) for i in indices]
  for start in range(0, len(indices), chunk):
    part = indices[start:start + chunk]
    records = (source.__getitems__(part) if hasattr(source, "__getitems__")
               else [source[i] for i in part])
    images.extend(np.asarray(r["image"], np.uint8) for r in records)
    labels.extend(int(r["label"]) for r in records)
  if not images:
    return np.zeros((0, 0, 0, 3), np.uint8), np.zeros((0,), np.int32)
  return np.stack(images), np.asarray(labels, np.int32)


def train_dataset(source, indices, *, global_batch: int, seed: int, cache: bool = False,
                  workers: int = 0, process_index: Optional[int] = None,
                  process_count: Optional[int] = None) -> grain.IterDataset:
  """Infinite stream of host-local training batches {'image': uint8, 'label': int32}.

  Shuffled with a new permutation every epoch (grain reshuffles each repetition), sharded
  across JAX processes element-wise, batched to global_batch / process_count.
  """
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if len(indices) == 0:
    raise ValueError("the training subset is empty; check the dataset's train split and FlagLimit")
  if cache:
    data = _InMemory(*load_arrays(source, indices))
  else:
    data = _Selected(source, indices)
  ds = grain.MapDataset.source(data).shuffle(seed=seed).repeat()
  if pc > 1:
    ds = ds[pi::pc]
  ds = ds.batch(global_batch // pc, drop_remainder=True)
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
  if workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return it


def train_index_dataset(num_examples: int, *, global_batch: int, seed: int,
                        process_index: Optional[int] = None,
                        process_count: Optional[int] = None) -> grain.IterDataset:
  """Infinite stream of host-local batches {'index': int32 positions into the training
  subset}, for data resident on the device (dispatch.place_resident).

  The same grain graph as train_dataset (shuffle per epoch, repeat, host sharding, batch)
  over positions instead of records, so position i of every batch names the example that
  train_dataset would have put there, and the iterator state (a position) is the same.
  """
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  if num_examples == 0:
    raise ValueError("the training subset is empty; check the dataset's train split and FlagLimit")
  ds = grain.MapDataset.source(np.arange(num_examples, dtype=np.int32)).shuffle(seed=seed).repeat()
  if pc > 1:
    ds = ds[pi::pc]
  ds = ds.batch(global_batch // pc, drop_remainder=True).map(lambda idx: {"index": idx})
  return ds.to_iter_dataset()


def eval_batches(images: np.ndarray, labels: np.ndarray, global_batch: int,
                 process_index: Optional[int] = None, process_count: Optional[int] = None
                 ) -> Iterator[dict]:
  """Fixed-shape host-local batches over a whole split: the last one is padded and masked,
  so evaluation never compiles a second shape."""
  pi = jax.process_index() if process_index is None else process_index
  pc = jax.process_count() if process_count is None else process_count
  local = global_batch // pc
  n = len(labels)
  for start in range(0, n, global_batch):
    idx = np.arange(start + pi * local, start + (pi + 1) * local)
    valid = idx < n
    idx = np.where(valid, idx, 0)
    yield {"image": images[idx], "label": labels[idx].astype(np.int32), "mask": valid}
