"""What every dataset reader shares beyond reading patches: the result type SourceData, skips,
class lists, release arrays, instance centroids.

A reader (`data_prep/sources/<kind>.py`) turns a user's or a public dataset into a list of
nucleus-centred `patch_size` x `patch_size` RGB uint8 crops, each with a class index, a
specimen id (the unit that train/val/test splits keep apart, see `data_prep/splits.py`) and the
place it came from.  Readers are pure numpy/PIL/scipy: the TFDS writer and the
`python -m data_prep.build` CLI live elsewhere and only consume `SourceData`.

Options, SourceError, image decoding, colour rules, resizing and centred crops live in the
library (`cellvit_jax/data/patch_reading.py`, whose docstring gives the conventions), because
prediction reads patch files the same way.  Bad input raises `SourceError` naming the file and
the fix, or, with `Options.skip_bad`, is logged, counted in `SourceData.skipped` and left out.
"""
import dataclasses
import logging
from typing import Any

import numpy as np

from cellvit_jax.data.patch_reading import Options, SKIP_HINT, SourceError

log = logging.getLogger("data_prep.sources")


@dataclasses.dataclass
class SourceData:
  """What a reader returns.

  Attributes:
    class_names: label index -> class name.
    examples: one dict per crop: image (uint8, patch_size x patch_size x 3), label (int index
      into class_names), specimen (str), x, y (float centre in the source image, -1 when the
      example is a whole patch file), source (file or image id it came from).
    skipped: (input, reason) for every input left out under Options.skip_bad.
    info: facts worth keeping in the dataset metadata (thresholds, counts, conventions).
  """
  class_names: list[str]
  examples: list[dict] = dataclasses.field(default_factory=list)
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  info: dict[str, Any] = dataclasses.field(default_factory=dict)

  def class_counts(self) -> dict[str, int]:
    """Number of examples per class name (classes without examples count 0)."""
    counts = np.bincount([e["label"] for e in self.examples], minlength=len(self.class_names))
    return {name: int(n) for name, n in zip(self.class_names, counts)}


def make_example(image, label, specimen, source, x=-1.0, y=-1.0) -> dict:
  return {"image": image, "label": int(label), "specimen": str(specimen), "x": float(x),
          "y": float(y), "source": str(source)}


def bad_input(options: Options, data: SourceData, path: str, message: str) -> None:
  """Raises SourceError(message + how to skip), or records a skip when options.skip_bad."""
  if not options.skip_bad:
    raise SourceError(f"{message}; {SKIP_HINT}")
  log.warning("skipped %s: %s", path, message)
  data.skipped.append((str(path), message))


def sort_class_names(names) -> list[str]:
  """Class names in sorted order; numerically when every name is an integer ('2' < '10')."""
  names = sorted(set(names))
  try:
    return sorted(names, key=int)
  except ValueError:
    return names


def as_uint8_rgb(array: np.ndarray, name: str) -> np.ndarray:
  """An image array from a .npy/.mat release (uint8, or float/int holding 0..255) as uint8 RGB.

  Float arrays are rounded; values outside 0..255 (after rounding) are refused rather than
  clipped because they mean the array is not what the format says.
  """
  a = np.asarray(array)
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, axis=-1)
  if a.ndim != 3 or a.shape[-1] not in (3, 4):
    raise SourceError(f"{name}: expected an (H, W, 3) image array, got shape {a.shape}")
  a = a[..., :3]
  if a.dtype == np.uint8:
    return np.ascontiguousarray(a)
  if np.issubdtype(a.dtype, np.floating):
    a = np.floor(a + 0.5)
  lo, hi = (a.min(), a.max()) if a.size else (0, 0)
  if lo < 0 or hi > 255:
    raise SourceError(f"{name}: image values span {lo}..{hi}, expected 0..255")
  return a.astype(np.uint8)


def instance_centroids(inst_map: np.ndarray) -> dict[int, tuple[float, float, int]]:
  """{instance id: (x, y, area)} for every non-zero id of an instance map (x = mean column).

  One pass of bincount over the labelled pixels, so it costs O(pixels) however many nuclei.
  """
  inst = np.asarray(inst_map)
  if np.issubdtype(inst.dtype, np.floating):
    inst = np.floor(inst + 0.5)
  inst = inst.astype(np.int64)
  rows, cols = np.nonzero(inst)
  if rows.size == 0:
    return {}
  ids = inst[rows, cols]
  area = np.bincount(ids)
  sum_x = np.bincount(ids, weights=cols)
  sum_y = np.bincount(ids, weights=rows)
  present = np.nonzero(area)[0]
  return {int(i): (sum_x[i] / area[i], sum_y[i] / area[i], int(area[i])) for i in present}


def class_selection(known: list[str], options: Options,
                    kind: str) -> tuple[list[str], dict[int, int]]:
  """For datasets with a fixed class list: (kept names, {dataset index -> new index}).

  options.class_names, if given, picks and orders a subset of `known`; any other name is an error
  naming the valid ones.
  """
  if options.class_names is None:
    return list(known), {i: i for i in range(len(known))}
  unknown = [c for c in options.class_names if c not in known]
  if unknown:
    raise SourceError(f"{kind}: unknown class name(s) {unknown} in class_names; "
                      f"{kind} classes are {known}")
  return list(options.class_names), {known.index(c): j for j, c in enumerate(options.class_names)}
