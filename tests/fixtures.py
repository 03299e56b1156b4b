"""Input fixtures shared by tests/test_sources.py and tests/test_build.py.

Writers of tiny inputs in the published formats: patch folders and CSV manifests (our
convention), PanNuke fold .npy files, Lizard .png + .mat (via scipy.io.savemat with the
release's keys).  Nuclei are dark squares drawn at known positions on a light background, so
"centred" is checked by where the dark pixels land.  The pytest fixtures that call the
`write_*` functions live in tests/conftest.py.
"""
import csv as csv_module
import os
import pathlib

import numpy as np
import scipy.io
from PIL import Image

S = 40
C = S // 2
BG = (235, 225, 230)
FG = (70, 40, 120)


# ---------------------------------------------------------------------------------------------
# helpers

def blank(h, w):
  img = np.empty((h, w, 3), np.uint8)
  img[:] = BG
  return img


def draw_square(img, x, y, r=2, colour=FG):
  """A (2r+1)-px square nucleus centred exactly on pixel (x, y), clipped to the image."""
  h, w = img.shape[:2]
  img[max(y - r, 0):min(y + r + 1, h), max(x - r, 0):min(x + r + 1, w)] = colour
  return img


def dark_centroid(crop):
  """(x, y) mean position of the nucleus-coloured pixels in a crop."""
  ys, xs = np.nonzero(np.all(crop == FG, axis=-1))
  assert ys.size, "no nucleus pixels in the crop"
  return xs.mean(), ys.mean()


def save(path, array, mode=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  im = Image.fromarray(array)
  if mode:
    im = im.convert(mode)
  im.save(path)
  return path


def patch(seed=0):
  """A 40x40 patch with a nucleus at its centre pixel."""
  img = blank(S, S)
  img[...] = np.array(BG) - seed % 7
  return draw_square(img, C, C)



def write_csv(path, header, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv_module.writer(f)
    if header:
      w.writerow(header)
    w.writerows(rows)
  return str(path)

# ---------------------------------------------------------------------------------------------
# folder

def write_folder_root(root):
  """Three classes, specimens P1, P2, P3, 'Pé 4'; unicode, spaces, nesting, OS droppings."""
  root = pathlib.Path(root)
  save(str(root / "tumour" / "P1_a.png"), patch(1))
  save(str(root / "tumour" / "P2_b.png"), patch(2))
  save(str(root / "tumour" / "nested dir" / "P3_c.png"), patch(3))
  save(str(root / "stroma cells" / "P1_d.png"), patch(4))
  save(str(root / "stroma cells" / "Pé 4_é.png"), patch(5))      # unicode + space
  save(str(root / "lymphocyte" / "P2_only.jpg"), patch(6))        # a class with one sample
  (root / "README.txt").write_text("root-level notes are ignored")
  (root / "tumour" / ".DS_Store").write_bytes(b"\0\0")
  return root


# ---------------------------------------------------------------------------------------------
# csv

def write_patch_manifest(tmp_path):
  """A manifest of 4 patch files (one by absolute path), labels CD8+/CD8-, specimens P1-P3."""
  tmp_path = pathlib.Path(tmp_path)
  base = tmp_path / "ds ü"
  save(str(base / "img" / "a 1.png"), patch(1))
  save(str(base / "img" / "b_é.png"), patch(2))
  save(str(base / "img" / "c.png"), patch(3), "L")
  abs_path = save(str(tmp_path / "elsewhere" / "d.png"), patch(4))
  rows = [["img/a 1.png", "CD8+", "P1"], ["img/b_é.png", "CD8-", "P2"],
          ["img/c.png", "CD8+", "P3"], [abs_path, "CD8-", "P1"]]
  return write_csv(base / "manifest.csv", ["path", "label", "specimen", "extra"], rows)


# ---------------------------------------------------------------------------------------------
# PanNuke

def make_pannuke_fold(root, k, nuclei_per_image, size=64, tissues=None):
  """Writes 'fold_k/Fold k/{images,masks}/foldk/*.npy' as in the release zips.

  nuclei_per_image: per image a list of (channel, instance id, x, y); each nucleus is a 5x5
  square centred on (x, y) (clipped at the border), written into masks[..., channel] with its
  id and drawn dark on the image.  Channel 5 is background = 1 where no nucleus is.
  """
  n = len(nuclei_per_image)
  images = np.zeros((n, size, size, 3), np.float64)
  masks = np.zeros((n, size, size, 6), np.float64)
  for i, nuclei in enumerate(nuclei_per_image):
    img = blank(size, size)
    for channel, inst, x, y in nuclei:
      draw_square(img, x, y)
      masks[i, max(y - 2, 0):y + 3, max(x - 2, 0):x + 3, channel] = inst
    images[i] = img
    masks[i, ..., 5] = (masks[i, ..., :5].sum(-1) == 0)
  base = os.path.join(root, f"fold_{k}", f"Fold {k}")
  os.makedirs(os.path.join(base, "images", f"fold{k}"))
  os.makedirs(os.path.join(base, "masks", f"fold{k}"))
  np.save(os.path.join(base, "images", f"fold{k}", "images.npy"), images)
  np.save(os.path.join(base, "images", f"fold{k}", "types.npy"),
          np.array(tissues or ["Colon"] * n))
  np.save(os.path.join(base, "masks", f"fold{k}", "masks.npy"), masks)
  return base


def write_pannuke_root(root):
  """Three folds, four images (specimens under pannuke_specimen='image'), seven nuclei."""
  root = str(root)
  make_pannuke_fold(root, 1, [
      [(0, 1, 20, 30), (2, 2, 45, 12), (2, 5, 50, 50)],     # neoplastic, 2 x connective
      [(4, 1, 31, 61)],                                     # epithelial at the bottom border
  ], tissues=["Colon", "Breast"])
  make_pannuke_fold(root, 2, [[(1, 3, 10, 10), (3, 4, 40, 20)]])   # inflammatory, dead
  make_pannuke_fold(root, 3, [[(1, 1, 33, 33)]])
  return root


# ---------------------------------------------------------------------------------------------
# Lizard

LIZARD_INFO = [["dpath_2", "1902160001_2019-06-11 12_36_32-lv1-39045-16016-3312-4096", 2],
               ["dpath_15", "1902160001_2019-06-11 12_36_32-lv1-44190-20016-5916-4469", 2],
               ["consep_1", "test_14", 3]]


def make_lizard_image(root, folder, name, h, w, nuclei, extra_rows=()):
  """Writes <folder>/<name>.png and lizard_labels/Lizard_Labels/Labels/<name>.mat.

  nuclei: (inst id, class 1..6, x, y) each a 5x5 square; extra_rows: (id, class, x, y) rows
  listed in the .mat without pixels in inst_map.  The .mat keys, shapes and conventions are
  those of the release's read_label.py: id/class (N, 1), bbox (N, 4) (y1, y2, x1, x2),
  centroid (N, 2) as (x, y).
  """
  img = blank(h, w)
  inst = np.zeros((h, w), np.int32)
  rows = []
  for inst_id, cls, x, y in nuclei:
    draw_square(img, x, y)
    inst[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = inst_id
    ys, xs = np.nonzero(inst == inst_id)
    rows.append((inst_id, cls, ys.min(), ys.max(), xs.min(), xs.max(), xs.mean(), ys.mean()))
  for inst_id, cls, x, y in extra_rows:
    rows.append((inst_id, cls, y, y, x, x, x, y))
  save(os.path.join(root, folder, name + ".png"), img)
  labels = os.path.join(root, "lizard_labels", "Lizard_Labels", "Labels")
  os.makedirs(labels, exist_ok=True)
  r = np.array(rows, dtype=np.float64)
  scipy.io.savemat(os.path.join(labels, name + ".mat"), {
      "inst_map": inst, "id": r[:, :1].astype(np.int32), "class": r[:, 1:2].astype(np.int32),
      "bbox": r[:, 2:6].astype(np.int32), "centroid": r[:, 6:8]})


def write_lizard_root(root):
  """Three images (consep_1 in fold 3; dpath_2, dpath_15 from one slide in fold 2)."""
  root = str(root)
  im1 = os.path.join("lizard_images1", "Lizard_Images1")
  im2 = os.path.join("lizard_images2", "Lizard_Images2")
  # Non-square (90 rows x 120 columns) with x != y, so swapped axes would land elsewhere or
  # outside; ids out of order so `id` must be used to map rows to instances.
  make_lizard_image(root, im1, "consep_1", 90, 120,
                    [(3, 3, 100, 20), (1, 2, 15, 70), (2, 6, 118, 88)],
                    extra_rows=[(7, 4, 60, 45)])
  make_lizard_image(root, im2, "dpath_2", 64, 80, [(1, 1, 40, 30), (2, 5, 10, 50)])
  make_lizard_image(root, im2, "dpath_15", 64, 80, [(1, 3, 70, 10)])
  write_csv(os.path.join(root, "lizard_labels", "Lizard_Labels", "info.csv"),
            ["Filename", "Source", "Split"], LIZARD_INFO)
  return root

