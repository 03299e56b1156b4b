"""On-disk cache of frozen foundation-model features, one file per (model, weights, data, split).

The key names everything the features depend on: the preset and its family, the sha256 of
the weights file, the dataset name and split, a sha256 of the split's selected uint8
images and labels (so a different FlagLimit, seed or rebuilt dataset misses), the input
size, resize method, feature and compute dtype.  Entries live in
<cache_dir>/<preset>/<dataset>/<split>-<key hash>.npz, written atomically (temp file +
rename): a crash never leaves half an entry, and an entry whose stored key differs is
recomputed, never trusted.
"""
import hashlib
import json
import os

import numpy as np

from cellvit_jax import atomic_files
from cellvit_jax.models.fm import weights as fm_weights
from cellvit_jax.runs import write_failures


def directory(fm_cfg) -> str:
  """The cache's root: config.fm.cache_dir, else $CELLVIT_CACHE/features or
  ~/.cache/cellvit_jax/features."""
  base = fm_cfg.cache_dir or os.path.join(
      os.environ.get("CELLVIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                      "cellvit_jax"), "features")
  return os.path.abspath(os.path.expanduser(base))


def data_sha(images: np.ndarray, labels: np.ndarray) -> str:
  h = hashlib.sha256()
  h.update(str(images.shape).encode())
  h.update(np.ascontiguousarray(images).tobytes())
  h.update(np.ascontiguousarray(labels, np.int64).tobytes())
  return h.hexdigest()


def key(preset: str, model, ckpt, dataset_name: str, split: str, images, labels) -> dict:
  """Everything an entry's features depend on; `model` the FoundationModel that computes them."""
  return {
      "version": 1,
      "preset": preset,
      "family": ckpt.family,
      "weights_sha256": fm_weights.weights_hash(ckpt),
      "num_heads": int(ckpt.hf_config.num_attention_heads),
      "dataset": dataset_name,
      "split": split,
      "num_examples": int(len(labels)),
      "data_sha256": data_sha(images, labels),
      "input_size": int(model.input_size),
      "resize_method": model.resize_method,
      "feature": model.feature,
      "dtype": np.dtype(model.dtype).name,
  }


def atomic_savez(path: str, **arrays):
  with atomic_files.atomic_path(path) as tmp:
    with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
      np.savez(f, **arrays)


class FeatureCache:

  def __init__(self, root: str):
    self.root = root

  def path(self, k: dict) -> str:
    digest = hashlib.sha256(json.dumps(k, sort_keys=True).encode()).hexdigest()[:20]
    return os.path.join(self.root, k["preset"], k["dataset"], f"{k['split']}-{digest}.npz")

  def get(self, k: dict):
    path = self.path(k)
    if not os.path.isfile(path):
      return None
    try:
      with np.load(path) as f:
        if json.loads(str(f["key"])) != k:
          return None
        return np.asarray(f["features"], np.float32)
    except (OSError, ValueError, KeyError):  # unreadable entry: recompute and replace it
      return None

  def put(self, k: dict, features: np.ndarray):
    path = self.path(k)
    try:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      atomic_savez(path, features=np.asarray(features, np.float32),
                   key=np.asarray(json.dumps(k, sort_keys=True)))
    except OSError as e:
      hint = write_failures.write_failure_hint(e, os.path.dirname(path),
                                            "pass another --config.fm.cache_dir")
      raise OSError(f"cannot write the feature cache entry {path} ({e.strerror}); {hint}") from None

  def get_or_compute(self, k: dict, compute):
    """(features, hit): the stored features, or compute() stored for next time."""
    cached = self.get(k)
    if cached is not None:
      return cached, True
    features = compute()
    self.put(k, features)
    return features, False
