"""The on-disk format of every dataset: images as raw bytes, older int64 datasets still read."""
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from cellvit_jax.data import datasets, tfds_writer

CLASSES = ("a", "b")


def _examples(n, seed):
  rng = np.random.default_rng(seed)
  return [dict(image=rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), label=i % 2,
               specimen=f"s{i % 3}", x=float(i), y=-1.0, source=f"src{i}") for i in range(n)]


def _write(tmp_path, name):
  splits = {"train": _examples(6, 0), "val": _examples(2, 1), "test": _examples(2, 2)}
  tfds_writer.write(str(tmp_path), name, CLASSES, splits, patch_size=8)
  return splits


def _read_back(tmp_path, name, split):
  source = datasets.open_dataset(name, str(tmp_path), log=lambda *a: None).source(split)
  return [source[i] for i in range(len(source))]


def _image_feature(tmp_path, name):
  with open(os.path.join(tfds_writer.dataset_dir(str(tmp_path), name), "features.json")) as f:
    return json.dumps(json.load(f))


def test_images_are_stored_as_bytes_and_round_trip(tmp_path):
  splits = _write(tmp_path, "new")
  assert '"encoding": "bytes"' in _image_feature(tmp_path, "new")
  for split, written in splits.items():
    read = _read_back(tmp_path, "new", split)
    assert len(read) == len(written)
    for r, w in zip(read, written):
      np.testing.assert_array_equal(np.asarray(r["image"]), w["image"])
      assert int(r["label"]) == w["label"]


def test_a_dataset_written_with_int64_images_still_reads(tmp_path, monkeypatch):
  """Datasets built before the bytes encoding (TFDS's int64-list default) keep working."""
  features = tfds_writer._features

  def old_features(class_names, patch_size):  # today's features, the image as before
    return tfds.features.FeaturesDict({
        **dict(features(class_names, patch_size).items()),
        "image": tfds.features.Tensor(shape=(patch_size, patch_size, 3), dtype=np.uint8)})
  monkeypatch.setattr(tfds_writer, "_features", old_features)
  splits = _write(tmp_path, "old")
  monkeypatch.undo()
  assert '"encoding": "bytes"' not in _image_feature(tmp_path, "old")
  read = _read_back(tmp_path, "old", "train")
  for r, w in zip(read, splits["train"]):
    np.testing.assert_array_equal(np.asarray(r["image"]), w["image"])
