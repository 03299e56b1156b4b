"""Batches of training-subset positions computed in bulk: grain's index stream, without its cost.

`IndexBatches(n, global_batch=, seed=)` yields exactly what `iter(pipeline.train_index_dataset(
n, ...))` yields (grain's per-epoch shuffle, repeat, host sharding, batch) and saves/restores the
same checkpoint state ({"next_index": batches taken}), so runs and checkpoints are
interchangeable with it. grain computes every position with one Python-level call of its
cycle-walking Simon cipher (index_shuffle); at batch 128 that was 8.5 ms per batch on our CPU,
more than the step of a small model on an accelerator. Here a whole epoch's permutation is one
vectorised numpy computation of the same cipher, and `positions(first, n)` gives n batches at
once without moving the iterator, so the train loop can put many steps' indices on the device
in one transfer.
"""
import json
import math
from typing import Optional

import jax
import numpy as np

_M32 = 0xFFFFFFFF
_ROUNDS = 4  # grain's ShuffleMapDataset uses 4 rounds


def _seed_seq(seed: int, n: int) -> list:
  """`std::seed_seq{seed}.generate(n words)`, the algorithm the C++ standard specifies; grain
  derives the cipher's round keys from it."""
  b = [0x8B8B8B8B] * n
  v = [seed & _M32]
  s = len(v)
  t = 11 if n >= 623 else 7 if n >= 68 else 5 if n >= 39 else 3 if n >= 7 else (n - 1) // 2
  p = (n - t) // 2
  q = p + t
  mix = lambda x: x ^ (x >> 27)
  for k in range(max(s + 1, n)):
    r1 = (1664525 * mix(b[k % n] ^ b[(k + p) % n] ^ b[(k - 1) % n])) & _M32
    r2 = (r1 + (s if k == 0 else (k % n + v[k - 1]) if k <= s else k % n)) & _M32
    b[(k + p) % n] = (b[(k + p) % n] + r1) & _M32
    b[(k + q) % n] = (b[(k + q) % n] + r2) & _M32
    b[k % n] = r2
  for k in range(max(s + 1, n), max(s + 1, n) + n):
    r3 = (1566083941 * mix((b[k % n] + b[(k + p) % n] + b[(k - 1) % n]) & _M32)) & _M32
    r4 = (r3 - k % n) & _M32
    b[(k + p) % n] ^= r3
    b[(k + q) % n] ^= r4
    b[k % n] = r4
  return b


def epoch_permutation(n: int, seed: int) -> np.ndarray:
  """[index_shuffle(i, max_index=n-1, seed=seed, rounds=4) for i in range(n)] (grain's shuffle
  of one epoch), for all i at once: a Simon cipher on B-bit blocks (B = max(16, bits of n-1,
  even)), cycle-walked until the value is below n."""
  if n <= 1:
    return np.zeros(n, np.int64)
  bits = int(math.ceil(math.log2(n - 1)))
  bits = max(bits + bits % 2, 16)
  w = np.uint64(bits // 2)
  mask = np.uint64((1 << (bits // 2)) - 1)
  keys = [np.uint64(k) & mask for k in _seed_seq(seed % 2 ** 32, _ROUNDS)]
  rotl = lambda x, r: ((x << np.uint64(r)) | (x >> (w - np.uint64(r)))) & mask
  f = lambda x: (rotl(x, 1) & rotl(x, 8)) ^ rotl(x, 2)

  def encrypt(x):
    left, right = (x >> w) & mask, x & mask
    for i in range(0, _ROUNDS, 2):
      left = left ^ f(right) ^ keys[i]
      right = right ^ f(left) ^ keys[i + 1]
    return (left << w) | right

  top = np.uint64(n - 1)
  if bits == 16 and n < 2 ** 14:
    # A small subset in the 16-bit minimum block: cycles hold few values < n, so walk them by
    # pointer jumping over the whole 2^16 domain (log steps) rather than one step at a time.
    nxt = encrypt(np.arange(2 ** 16, dtype=np.uint64))
    while True:
      far = nxt > top
      if not far[:n].any():
        return nxt[:n].astype(np.int64)
      nxt = np.where(far, nxt[nxt.astype(np.int64)], nxt)
  out = encrypt(np.arange(n, dtype=np.uint64))
  far = out > top
  while far.any():  # at least a quarter of the domain is < n: a few rounds
    out[far] = encrypt(out[far])
    far = out > top
  return out.astype(np.int64)


class IndexBatches:
  """Host-local batches {'index': int32 positions} of pipeline.train_index_dataset, by number.

  positions(first, n): batches first .. first+n-1 as an (n, local batch) int32 array, without
  moving the iterator; take(n): the next n batches (moves it); advance(n): moves it without
  computing them; next(): one batch as a dict.
  get_state/set_state: grain's checkpoint protocol, with the bytes grain writes for its own
  iterator (runs/checkpoint.py saves either).
  """

  def __init__(self, num_examples: int, *, global_batch: int, seed: int,
               process_index: Optional[int] = None, process_count: Optional[int] = None):
    if num_examples == 0:
      raise ValueError("the training subset is empty; check the dataset's train split and "
                       "FlagLimit")
    self._n, self._seed = num_examples, seed
    self._pi = jax.process_index() if process_index is None else process_index
    self._pc = jax.process_count() if process_count is None else process_count
    self._local = global_batch // self._pc
    self._epochs = {}
    self.next_index = 0

  def _permutation(self, epoch: int) -> np.ndarray:
    if epoch not in self._epochs:
      if len(self._epochs) >= 4:  # positions move forward: keep only recent epochs
        self._epochs.pop(min(self._epochs))
      self._epochs[epoch] = epoch_permutation(self._n, (self._seed + epoch) % 2 ** 32)
    return self._epochs[epoch]

  def positions(self, first: int, n: int) -> np.ndarray:
    # Element j of this host's stream is element pi + j * pc of the repeated shuffle.
    j = np.arange(first * self._local, (first + n) * self._local, dtype=np.int64)
    g = self._pi + j * self._pc
    epoch, within = np.divmod(g, self._n)
    out = np.empty(len(g), np.int32)
    for e in np.unique(epoch):
      sel = epoch == e
      out[sel] = self._permutation(int(e))[within[sel]]
    return out.reshape(n, self._local)

  def take(self, n: int) -> np.ndarray:
    out = self.positions(self.next_index, n)
    self.next_index += n
    return out

  def advance(self, n: int):
    """Marks n more batches as taken (their positions were read with positions())."""
    self.next_index += n

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    return {"index": self.take(1)[0]}

  def get_state(self) -> bytes:
    return json.dumps({"next_index": self.next_index}, indent=4).encode()

  def set_state(self, state):
    state = json.loads(state) if isinstance(state, (bytes, str)) else state
    self.next_index = int(state["next_index"])

  def start_prefetch(self):
    """grain's restore calls this; nothing is prefetched."""
