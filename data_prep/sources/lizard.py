"""Lizard (Graham et al., ICCV-W 2021; warwick.ac.uk/lizard-dataset): one crop per nucleus.

Colon H&E image regions at 20x, six nucleus classes.

Published format, as read in the release's own README.txt and read_label.py (a copy of the
unzipped release is in the public repo marekfejda/ZNEUS_data_zadanie_2):

    lizard_images1/Lizard_Images1/<name>.png    RGB image regions, e.g. consep_1.png
    lizard_images2/Lizard_Images2/<name>.png
    lizard_labels/Lizard_Labels/Labels/<name>.mat
    lizard_labels/Lizard_Labels/info.csv        Filename,Source,Split

Each .mat (MATLAB v5, read with scipy.io.loadmat) holds
    inst_map  (H, W) int32, 0 = background, k = nucleus k
    id        (N, 1)  the inst_map value of row i of the arrays below
    class     (N, 1)  1 neutrophil, 2 epithelial, 3 lymphocyte, 4 plasma, 5 eosinophil,
                      6 connective tissue (README.txt lists class 5 as "Neutrophil", a typo:
                      the Lizard paper and the CoNIC challenge README (TissueImageAnalytics/CoNIC)
                      name it eosinophil, in this order)
    bbox      (N, 4)  (y1, y2, x1, x2)
    centroid  (N, 2)  (x, y) per read_label.py; its index base is not documented.

Because the index base of `centroid` is undocumented, the crop centre is the instance's own
centroid computed from inst_map (mean pixel position, 0-based, x = column), which is exact
whatever the convention; the stored centroid is only compared with it and the median offset
is kept in info['stored_centroid_offset'] (about (0, 0) means 0-based (x, y); (1, 1) means
1-based; a large offset with swapped axes would mean (row, col)).  A nucleus listed in `id`
but absent from inst_map falls back to the stored (x, y) centroid (counted in
info['centroid_from_mat']); without either it is left out (info['nuclei_without_position']).

info.csv: Filename = image name; Source = where the region came from: for DigestPath
('dpath_*') a slide-derived name '<slide id and scan time>-lv1-<x>-<y>-<w>-<h>', so several
dpath images share a slide; for GlaS / CRAG / CoNSeP the original image name ('testA_54',
'train_105'), for PanNuke 'None'; Split = the published fold (1-3).  No patient ids are
published.  Specimen (Options.lizard_specimen): 'image' (default) = image name; 'slide' =
'dpath:<slide>' for DigestPath images (the text of Source before '-lv1-'), else the image name
(the best patient-level grouping the release allows; needs info.csv); 'fold' = 'fold<k>'.

Lizard is 20x (0.5 um/px): a 40x40 crop covers the area of an 80x80 crop at 40x.
"""
import csv
import os
import re

import numpy as np
import scipy.io

from cellvit_jax.data import patch_reading
from cellvit_jax.data.patch_reading import Options, SourceError
from data_prep.sources import common
from data_prep.sources.common import SourceData

# Class value k (1-based in the .mat) -> CLASS_NAMES[k - 1].
CLASS_NAMES = ["neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil", "connective"]


def _natural_key(name: str):
  """'consep_2' before 'consep_10'."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _read_info(path: str) -> dict[str, dict[str, str]]:
  """{image name: {'Source': ..., 'Split': ...}} from Lizard's info.csv."""
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    if not reader.fieldnames or "Filename" not in reader.fieldnames:
      raise SourceError(f"{path}: expected Lizard's info.csv with columns Filename,Source,Split, "
                        f"found {reader.fieldnames}")
    return {row["Filename"].strip(): row for row in reader if row.get("Filename")}


def _slide_of(name: str, info_row) -> str:
  source = (info_row or {}).get("Source") or ""
  if name.startswith("dpath") and "-lv1-" in source:
    return "dpath:" + source.split("-lv1-", 1)[0]
  return name


def load_label(path: str) -> dict[str, np.ndarray]:
  """inst_map (int64), id, class (1-D int64) and centroid ((N, 2) float or None) of one .mat."""
  try:
    mat = scipy.io.loadmat(path)
  except NotImplementedError as e:  # scipy's answer to v7.3 (HDF5) files
    raise SourceError(f"{path}: MATLAB v7.3 (HDF5) .mat is not supported; re-save it with "
                      "save(..., '-v7') or scipy.io.savemat") from e
  except (ValueError, OSError, TypeError) as e:
    raise SourceError(f"{path}: not a readable .mat file ({e}); re-extract the labels") from e
  missing = [k for k in ("inst_map", "class") if k not in mat]
  if missing:
    found = sorted(k for k in mat if not k.startswith("__"))
    raise SourceError(f"{path}: missing key(s) {missing}, found {found}; expected a Lizard label "
                      "with inst_map, id, class, bbox, centroid")
  inst = np.asarray(mat["inst_map"])
  if inst.ndim != 2:
    raise SourceError(f"{path}: inst_map has shape {inst.shape}, expected (H, W)")
  classes = np.asarray(mat["class"]).astype(np.int64).ravel()
  # Without `id`, rows are taken to be nuclei 1..N in order (read_label.py always has it).
  ids = (np.asarray(mat["id"]).astype(np.int64).ravel() if "id" in mat
         else np.arange(1, classes.size + 1))
  if ids.size != classes.size:
    raise SourceError(f"{path}: {ids.size} ids but {classes.size} classes")
  centroid = None
  if "centroid" in mat and np.asarray(mat["centroid"]).size:
    centroid = np.asarray(mat["centroid"], dtype=np.float64).reshape(-1, 2)
    if centroid.shape[0] != ids.size:
      centroid = None
  return {"inst_map": inst, "id": ids, "class": classes, "centroid": centroid}


def read(input_path: str, options: Options) -> SourceData:
  """Reads the unzipped Lizard release (images + labels) under input_path; see the docstring."""
  root = os.path.abspath(input_path)
  if not os.path.isdir(root):
    raise SourceError(f"Lizard root {input_path} is not a directory; give the folder holding "
                      "lizard_images1/, lizard_images2/ and lizard_labels/")
  images, labels, info_csv = {}, {}, None
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for name in sorted(filenames):
      stem, ext = os.path.splitext(name)
      p = os.path.join(dirpath, name)
      if patch_reading.is_ignored_file(name):
        continue
      if ext.lower() == ".png":
        images.setdefault(stem, p)
      elif ext.lower() == ".mat":
        labels.setdefault(stem, p)
      elif name.lower() == "info.csv":
        info_csv = p
  if not labels:
    raise SourceError(f"Lizard root {root}: no .mat labels found; unzip lizard_labels.zip there "
                      "(lizard_labels/Lizard_Labels/Labels/*.mat)")
  info = _read_info(info_csv) if info_csv else {}
  if options.lizard_specimen in ("slide", "fold") and not info:
    raise SourceError(f"Lizard root {root}: lizard_specimen={options.lizard_specimen!r} needs "
                      "Lizard's info.csv (lizard_labels/Lizard_Labels/info.csv), not found")

  class_names, remap = common.class_selection(CLASS_NAMES, options, "lizard")
  data = SourceData(class_names=class_names, info={
      "kind": "lizard", "root": root, "info_csv": info_csv,
      "specimen_rule": options.lizard_specimen, "magnification": "20x",
      "centre": "instance centroid computed from inst_map (0-based x = column, y = row)",
      "num_images": 0, "dropped_by_class": 0, "centroid_from_mat": 0,
      "nuclei_without_position": 0,
      "images_without_label": sorted(set(images) - set(labels), key=_natural_key)})
  offsets = []
  for name in sorted(labels, key=_natural_key):
    label_path = labels[name]
    if name not in images:
      common.bad_input(options, data, label_path, f"{label_path}: no image {name}.png found under "
                       f"{root}; unzip lizard_images1.zip and lizard_images2.zip there")
      continue
    try:
      n = _read_image(name, images[name], label_path, info.get(name), options, data, remap,
                      offsets)
    except SourceError as e:
      common.bad_input(options, data, label_path, str(e))
      continue
    data.info["num_images"] += 1
    common.log.debug("lizard %s: %d nuclei", name, n)
  if not data.examples:
    raise SourceError(f"Lizard root {root}: no nuclei read (skipped {len(data.skipped)})")
  if offsets:
    off = np.median(np.asarray(offsets), axis=0)
    data.info["stored_centroid_offset"] = [round(float(off[0]), 3), round(float(off[1]), 3)]
  data.info["num_specimens"] = len({e["specimen"] for e in data.examples})
  return data


def _read_image(name, image_path, label_path, info_row, options, data, remap, offsets) -> int:
  label = load_label(label_path)
  image = patch_reading.load_rgb(image_path, options)
  inst = label["inst_map"]
  if image.shape[:2] != inst.shape:
    raise SourceError(f"{label_path}: inst_map is {inst.shape[1]}x{inst.shape[0]} but "
                      f"{image_path} is {image.shape[1]}x{image.shape[0]}; image and label "
                      "do not belong together")
  bad = sorted(set(label["class"].tolist()) - set(range(1, len(CLASS_NAMES) + 1)))
  if bad:
    raise SourceError(f"{label_path}: class value(s) {bad} outside 1..{len(CLASS_NAMES)}")
  if options.lizard_specimen == "slide":
    specimen = _slide_of(name, info_row)
  elif options.lizard_specimen == "fold":
    if not info_row or not (info_row.get("Split") or "").strip():
      raise SourceError(f"{label_path}: image {name} has no Split in info.csv, needed by "
                        "lizard_specimen='fold'")
    specimen = f"fold{info_row['Split'].strip()}"
  else:
    specimen = name
  centroids = common.instance_centroids(inst)
  cropper = patch_reading.Cropper(image, options, name=image_path)
  n = 0
  for row, (inst_id, cls) in enumerate(zip(label["id"].tolist(), label["class"].tolist())):
    if inst_id in centroids:
      x, y, _ = centroids[inst_id]
      if label["centroid"] is not None:
        offsets.append(label["centroid"][row] - (x, y))
    elif label["centroid"] is not None:
      x, y = label["centroid"][row]
      data.info["centroid_from_mat"] += 1
    else:
      data.info["nuclei_without_position"] += 1
      continue
    if cls - 1 not in remap:
      data.info["dropped_by_class"] += 1
      continue
    data.examples.append(
        common.make_example(cropper.crop(x, y), remap[cls - 1], specimen, name, x, y))
    n += 1
  return n
