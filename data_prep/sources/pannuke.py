"""PanNuke (Gamper et al. 2019, 2020): one crop per nucleus, five nucleus classes.

Download: warwick.ac.uk/fac/cross_fac/tia/data/pannuke (fold_1.zip ... fold_3.zip).

Published format, as read in the release's own fold README ("# 1St Fold": images.npy = 256x256
image patches; masks.npy = "6 channel instance-wise masks (0: Neoplastic cells, 1:
Inflammatory, 2: Connective/Soft tissue cells, 3: Dead Cells, 4: Epithelial, 6 [sic, the sixth
channel, index 5]: Background)"; types.npy = tissue type of each patch) and in loaders that
open the unzipped release (torch_em's pannuke.py, which also notes channel 5 holds the true
background as positive pixels; pathml's PanNukeDataset):

    fold_1/Fold 1/images/fold1/images.npy   (N, 256, 256, 3) RGB 0..255, stored as floats
    fold_1/Fold 1/images/fold1/types.npy    (N,) str, e.g. 'Breast', 'Colon' (19 tissues)
    fold_1/Fold 1/masks/fold1/masks.npy     (N, 256, 256, 6) float64; channels 0-4 are
                                            instance maps (0 = no nucleus, k > 0 = nucleus k),
                                            channel 5 is background (not used here)
    ... fold_2, fold_3 alike (2,656 / 2,523 / 2,722 patches; 7,901 in all, 40x, ~0.25 um/px;
    counts from the Hugging Face mirror's card, Angelou0516/PanNuke)

The image dtype is not stated in the README; loaders cast it with `.astype(np.uint8)`, which
says it is not uint8 (float64 is the usual report).  Any numeric dtype holding 0..255 is
accepted (floats rounded); values outside 0..255 are refused (common.as_uint8_rgb).

Other copies re-pack it (e.g. 'Part 1/Images/images.npy' + 'Part 1/Masks/masks.npy'), so the
reader walks the input root for images.npy files and pairs each with the one masks.npy found
under the nearest ancestor folder that holds exactly one of each; types.npy is taken from the
images.npy folder (or the same ancestor).  The fold name is the first path component below
the input root (or the ancestor's name when the root is a fold itself).  The arrays are opened
memory-mapped, one patch at a time: a real fold is ~4 GB of images and ~8 GB of masks.

Crops: one per instance id per channel 0-4, centred at the instance's centroid (mean pixel
position), label = the channel's class (CLASS_NAMES below, same order as the channels),
x, y = centroid in the 256x256 patch, source = '<fold>/<index>' (index = row of images.npy).

Specimen: PanNuke publishes no patient or slide ids, and patches from the same slide are spread
over the release, so no split can be proven patient-disjoint.  Options.pannuke_specimen =
'image' (default) names the finest unit known, '<fold>/<index>': crops of one 256x256 patch
never straddle a split, but two patches of one slide can.  'fold' makes the fold the
specimen, so a specimen split keeps the published folds whole (the authors' intended
evaluation unit; with three folds, one fold per split).
"""
import os

import numpy as np

from cellvit_jax.data import patch_reading
from cellvit_jax.data.patch_reading import Options, SourceError
from data_prep.sources import common
from data_prep.sources.common import SourceData

# Channel index -> class, from the fold README (channel order 0..4).
CLASS_NAMES = ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]
NUM_TYPE_CHANNELS = 5


def find_folds(root: str) -> list[dict]:
  """[{fold, images, masks or None, types or None}] for every images.npy under root."""
  found = {"images.npy": [], "masks.npy": [], "types.npy": []}
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in filenames:
      if name.lower() in found:
        found[name.lower()].append(os.path.join(dirpath, name))

  def under(d, paths):
    return [p for p in paths if os.path.commonpath([d, p]) == d]

  folds = []
  for img in sorted(found["images.npy"]):
    d, mask = os.path.dirname(img), None
    while True:
      imgs, masks = under(d, found["images.npy"]), under(d, found["masks.npy"])
      if len(imgs) > 1:
        break     # climbed into a folder shared with other folds
      if masks:
        if len(masks) > 1:
          raise SourceError(f"PanNuke root {root}: {img} has {len(masks)} masks.npy candidates "
                            f"under {d}; keep one fold per folder, e.g. 'Fold 1/images/fold1/"
                            "images.npy' and 'Fold 1/masks/fold1/masks.npy'")
        mask = masks[0]
        break
      if d == root or os.path.dirname(d) == d:
        break
      d = os.path.dirname(d)
    if mask is not None:
      rel = os.path.relpath(img, root).split(os.sep)
      fold = rel[0] if len(rel) > 1 and d != root else os.path.basename(os.path.abspath(d))
    else:
      # Re-packed layouts like images/fold1/images.npy + masks/fold1/masks.npy: pair by the
      # name of the folder holding the file.
      parent = os.path.basename(os.path.dirname(img)).lower()
      same = [m for m in found["masks.npy"]
              if os.path.basename(os.path.dirname(m)).lower() == parent]
      d, fold = os.path.dirname(img), os.path.basename(os.path.dirname(img))
      mask = same[0] if len(same) == 1 else None   # read() reports the missing masks
    types = [p for p in found["types.npy"] if os.path.dirname(p) == os.path.dirname(img)]
    types = types or (under(d, found["types.npy"]) if d != root else [])
    folds.append({"fold": fold, "images": img, "masks": mask,
                  "types": types[0] if len(types) == 1 else None})
  names = [f["fold"] for f in folds]
  if len(set(names)) != len(names):
    # Two folds under one top-level folder: fall back to their ancestor folders' names.
    for f in folds:
      f["fold"] = os.path.relpath(os.path.dirname(f["images"]), root).replace(os.sep, "/")
  return folds


def read(input_path: str, options: Options) -> SourceData:
  """Reads one or more PanNuke folds under input_path; see the module docstring."""
  root = os.path.abspath(input_path)
  if not os.path.isdir(root):
    raise SourceError(f"PanNuke root {input_path} is not a directory; give the folder holding "
                      "the unzipped folds (e.g. 'Fold 1/images/fold1/images.npy')")
  folds = find_folds(root)
  if not folds:
    raise SourceError(f"PanNuke root {root}: no images.npy found; unzip fold_1.zip ... fold_3.zip "
                      "there (each gives 'Fold K/images/foldK/images.npy' and "
                      "'Fold K/masks/foldK/masks.npy')")
  class_names, remap = common.class_selection(CLASS_NAMES, options, "pannuke")
  data = SourceData(class_names=class_names, info={
      "kind": "pannuke", "root": root, "folds": {}, "specimen_rule": options.pannuke_specimen,
      "magnification": "40x",
      "channels": dict(enumerate(CLASS_NAMES)), "dropped_by_class": 0,
      "centre": "instance centroid (mean pixel position) per channel 0-4"})
  for f in folds:
    if f["masks"] is None:
      common.bad_input(options, data, f["images"], f"PanNuke root {root}: no masks.npy next to "
                       f"{f['images']}; unzip the fold's masks (masks/foldK/masks.npy) into the "
                       "same fold folder")
      continue
    try:
      n = _read_fold(f, options, data, remap)
    except SourceError as e:
      common.bad_input(options, data, f["images"], str(e))
      continue
    data.info["folds"][f["fold"]] = {"images": f["images"], "masks": f["masks"],
                                     "types": f["types"], "num_patches": n}
  if not data.examples:
    raise SourceError(f"PanNuke root {root}: no nuclei found (skipped {len(data.skipped)})")
  data.info["num_specimens"] = len({e["specimen"] for e in data.examples})
  return data


def _load(path: str, what: str):
  try:
    return np.load(path, mmap_mode="r", allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise SourceError(f"{path}: cannot read PanNuke {what} .npy ({e}); re-extract the fold") from e


def _read_fold(f: dict, options: Options, data: SourceData, remap: dict[int, int]) -> int:
  images = _load(f["images"], "images")
  masks = _load(f["masks"], "masks")
  types = np.asarray(_load(f["types"], "types")) if f["types"] else None
  if images.ndim != 4 or images.shape[-1] != 3:
    raise SourceError(f"{f['images']}: shape {images.shape}, expected (N, H, W, 3)")
  if masks.ndim != 4 or masks.shape[:3] != images.shape[:3] or masks.shape[-1] < NUM_TYPE_CHANNELS:
    raise SourceError(f"{f['masks']}: shape {masks.shape} does not match images {images.shape}; "
                      "expected (N, H, W, 6) with instance maps in channels 0-4")
  if types is not None and types.shape[0] != images.shape[0]:
    raise SourceError(f"{f['types']}: {types.shape[0]} entries for {images.shape[0]} images")
  # Nuclei per tissue type (types.npy), kept in info: PanNuke is very unbalanced by tissue.
  tissues = data.info.setdefault("nuclei_per_tissue", {})
  for i in range(images.shape[0]):
    name = f"{f['images']}[{i}]"
    image = common.as_uint8_rgb(images[i], name)
    cropper = patch_reading.Cropper(image, options, name=name)
    tissue = str(types[i]) if types is not None else ""
    source = f"{f['fold']}/{i}"
    specimen = f["fold"] if options.pannuke_specimen == "fold" else source
    mask = np.asarray(masks[i])
    for channel in range(NUM_TYPE_CHANNELS):
      centroids = common.instance_centroids(mask[..., channel])
      if channel not in remap:
        data.info["dropped_by_class"] += len(centroids)
        continue
      for inst_id in sorted(centroids):
        x, y, _ = centroids[inst_id]
        data.examples.append(
            common.make_example(cropper.crop(x, y), remap[channel], specimen, source, x, y))
        tissues[tissue] = tissues.get(tissue, 0) + 1
  return int(images.shape[0])
