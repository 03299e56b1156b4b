"""Tests of data_prep.sources readers and data_prep.splits.

Fixtures are written into tmp_path by the tests themselves, in the published formats, by
the writers in tests/fixtures.py (pytest fixtures folder_root, patch_manifest, pannuke_root,
lizard_root in tests/conftest.py).  Nuclei are dark squares drawn at known positions on a
light background, so "centred" is checked by where the dark pixels land.
"""
import csv as csv_module
import json
import os

import numpy as np
import pytest
import scipy.io

from cellvit_jax.data import patch_reading
from cellvit_jax.data.patch_reading import Options, SourceError
from data_prep import sources, splits
from data_prep.sources import common
from fixtures import (C, FG, S, blank, dark_centroid, draw_square, make_lizard_image,
                      make_pannuke_fold, patch, save, write_csv)


# ---------------------------------------------------------------------------------------------
# helpers

def check_examples(data):
  json.dumps(data.info)     # the writer stores info as dataset metadata
  assert data.examples
  for e in data.examples:
    assert set(e) == {"image", "label", "specimen", "x", "y", "source"}
    assert e["image"].shape == (S, S, 3) and e["image"].dtype == np.uint8
    assert 0 <= e["label"] < len(data.class_names)
    assert isinstance(e["specimen"], str) and e["specimen"]
    assert isinstance(e["x"], float) and isinstance(e["y"], float)


def check_split_disjoint(data, seed=0):
  specs = [e["specimen"] for e in data.examples]
  n_splits = min(3, len(set(specs)))
  fractions = dict(list({"train": 0.7, "val": 0.15, "test": 0.15}.items())[:n_splits])
  total = sum(fractions.values())
  fractions = {k: v / total for k, v in fractions.items()}
  assignment = splits.assign_splits(specs, fractions, seed=seed)
  parts = splits.split_examples(data.examples, assignment)
  assert sum(len(v) for v in parts.values()) == len(data.examples)
  assert all(parts.values())
  splits.check_disjoint({k: [e["specimen"] for e in v] for k, v in parts.items()})

# ---------------------------------------------------------------------------------------------
# registry, options, common

def test_unknown_kind_names_valid_kinds():
  with pytest.raises(ValueError) as e:
    sources.read("imagenet", "x", Options())
  for kind in ("folder", "csv", "pannuke", "lizard", "ihc_demo"):
    assert kind in str(e.value)
  assert set(sources.KINDS) == {"folder", "csv", "pannuke", "lizard", "ihc_demo"}


def test_options_validate():
  with pytest.raises(ValueError, match="pad_mode"):
    Options(pad_mode="mirror")
  with pytest.raises(ValueError, match="class_names"):
    Options(class_names=["a", "a"])


def test_cropper_centre_and_padding_modes():
  img = (np.arange(50 * 70 * 3) % 251).astype(np.uint8).reshape(50, 70, 3)
  inner = patch_reading.Cropper(img, Options()).crop(35.0, 24.5)   # rounds to (35, 25)
  np.testing.assert_array_equal(inner, img[25 - C:25 + C, 35 - C:35 + C])
  for mode in ("reflect", "symmetric", "edge", "wrap"):
    for x, y in ((2, 48), (69, 0), (35, 49)):
      got = patch_reading.Cropper(img, Options(pad_mode=mode)).crop(x, y)
      padded = np.pad(img, ((S, S), (S, S), (0, 0)), mode=mode)
      np.testing.assert_array_equal(got, padded[S + y - C:S + y + C, S + x - C:S + x + C])
  const = patch_reading.Cropper(img, Options(pad_mode="constant", pad_value=255)).crop(0, 0)
  assert (const[:C, :] == 255).all() and (const[:, :C] == 255).all()
  tiny = img[:5, :7]     # smaller than a crop: reflection repeats, still 40x40
  assert patch_reading.Cropper(tiny, Options()).crop(3, 2).shape == (S, S, 3)
  with pytest.raises(SourceError, match="outside"):
    patch_reading.Cropper(img, Options()).crop(70, 3)


def test_load_rgb_colour_conversions(tmp_path):
  rgb = patch()
  gray = save(str(tmp_path / "g.png"), rgb, "L")
  out = patch_reading.load_rgb(gray, Options())
  assert out.shape == (S, S, 3) and out.dtype == np.uint8
  assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
  pal = save(str(tmp_path / "p.png"), rgb, "P")
  assert patch_reading.load_rgb(pal, Options()).shape == (S, S, 3)
  rgba = np.dstack([rgb, np.full((S, S), 255, np.uint8)])
  rgba[0, 0, 3] = 0     # a transparent pixel becomes white
  out = patch_reading.load_rgb(save(str(tmp_path / "a.png"), rgba), Options())
  assert out[0, 0].tolist() == [255, 255, 255]
  np.testing.assert_array_equal(out[1:, 1:], rgb[1:, 1:])
  g16 = np.full((S, S), 65535, np.uint16)
  g16[0, 0] = 257 * 10
  p16 = save(str(tmp_path / "g16.png"), g16)
  out = patch_reading.load_rgb(p16, Options())
  assert out[1, 1].tolist() == [255] * 3 and out[0, 0].tolist() == [10] * 3
  with pytest.raises(SourceError, match="16-bit"):
    patch_reading.load_rgb(p16, Options(scale_16bit=False))


def test_instance_centroids():
  inst = np.zeros((10, 12), np.int32)
  inst[2:5, 7:10] = 3      # centre (x=8, y=3)
  inst[8, 0] = 1
  cents = common.instance_centroids(inst)
  assert cents == {1: (0.0, 8.0, 1), 3: (8.0, 3.0, 9)}


# ---------------------------------------------------------------------------------------------
# folder

def test_folder_reads_classes_specimens_and_unicode(folder_root):
  data = sources.read("folder", str(folder_root), Options())
  check_examples(data)
  assert data.class_names == ["lymphocyte", "stroma cells", "tumour"]
  got = {e["source"]: (data.class_names[e["label"]], e["specimen"]) for e in data.examples}
  assert got == {
      "lymphocyte/P2_only.jpg": ("lymphocyte", "P2"),
      "stroma cells/P1_d.png": ("stroma cells", "P1"),
      "stroma cells/Pé 4_é.png": ("stroma cells", "Pé 4"),
      "tumour/P1_a.png": ("tumour", "P1"),
      "tumour/P2_b.png": ("tumour", "P2"),
      "tumour/nested dir/P3_c.png": ("tumour", "P3"),
  }
  assert data.class_counts()["lymphocyte"] == 1      # the one-sample class is kept
  for e in data.examples:
    assert e["x"] == -1.0 and e["y"] == -1.0
    if e["source"].endswith(".png"):
      assert dark_centroid(e["image"]) == (C, C)
  assert data.skipped == [] and data.info["ignored"] == 2
  check_split_disjoint(data)


def test_folder_specimen_pattern_and_csv(folder_root, tmp_path):
  data = sources.read("folder", str(folder_root), Options(specimen_pattern=r"_(?P<specimen>\w+)\."))
  assert {e["source"]: e["specimen"] for e in data.examples}["tumour/P1_a.png"] == "a"
  with pytest.raises(SourceError, match="named group"):
    sources.read("folder", str(folder_root), Options(specimen_pattern=r"(\w+)_"))
  rows = [["tumour/P1_a.png", "S1"], ["P2_b.png", "S2"], ["P3_c.png", "S1"],
          ["stroma cells/P1_d.png", "S3"], ["Pé 4_é.png", "S3"], ["P2_only.jpg", "S2"]]
  sidecar = write_csv(tmp_path / "spec.csv", ["file", "specimen"], rows)
  data = sources.read("folder", str(folder_root), Options(specimen_csv=sidecar))
  assert {e["source"]: e["specimen"] for e in data.examples}["tumour/nested dir/P3_c.png"] == "S1"
  sidecar = write_csv(tmp_path / "spec2.csv", ["file", "specimen"], rows[:-1])
  with pytest.raises(SourceError, match="P2_only.jpg"):
    sources.read("folder", str(folder_root), Options(specimen_csv=sidecar))


def test_folder_corrupt_image(folder_root):
  bad = folder_root / "tumour" / "P9_broken.png"
  bad.write_bytes(b"this is not a png")
  with pytest.raises(SourceError) as e:
    sources.read("folder", str(folder_root), Options())
  assert "P9_broken.png" in str(e.value) and "corrupt" in str(e.value)
  assert "skip_bad" in str(e.value)
  data = sources.read("folder", str(folder_root), Options(skip_bad=True))
  assert len(data.examples) == 6
  assert [os.path.basename(p) for p, _ in data.skipped] == ["P9_broken.png"]


def test_folder_truncated_image(folder_root):
  good = folder_root / "tumour" / "P1_a.png"
  (folder_root / "tumour" / "P8_cut.png").write_bytes(good.read_bytes()[:60])
  with pytest.raises(SourceError, match="P8_cut.png"):
    sources.read("folder", str(folder_root), Options())


def test_folder_non_image_file(folder_root):
  (folder_root / "stroma cells" / "notes.txt").write_text("hello")
  with pytest.raises(SourceError) as e:
    sources.read("folder", str(folder_root), Options())
  assert "notes.txt" in str(e.value) and "not an image" in str(e.value)
  data = sources.read("folder", str(folder_root), Options(skip_bad=True))
  assert len(data.skipped) == 1 and len(data.examples) == 6


def test_folder_empty_class_folder(folder_root):
  os.makedirs(folder_root / "necrosis")
  with pytest.raises(SourceError) as e:
    sources.read("folder", str(folder_root), Options())
  assert "necrosis" in str(e.value) and "no image files" in str(e.value)
  data = sources.read("folder", str(folder_root), Options(skip_bad=True))
  assert "necrosis" not in data.class_names and len(data.skipped) == 1
  fixed = ["tumour", "necrosis", "stroma cells", "lymphocyte"]
  data = sources.read("folder", str(folder_root), Options(skip_bad=True, class_names=fixed))
  assert data.class_names == fixed and data.class_counts()["necrosis"] == 0
  assert data.class_counts()["tumour"] == 3


def test_folder_unknown_label(folder_root):
  opts = Options(class_names=["tumour", "stroma cells"])
  with pytest.raises(SourceError) as e:
    sources.read("folder", str(folder_root), opts)
  assert "lymphocyte" in str(e.value) and "unknown label" in str(e.value)
  data = sources.read("folder", str(folder_root), Options(class_names=["tumour", "stroma cells"],
                                                          skip_bad=True))
  assert data.class_names == ["tumour", "stroma cells"] and len(data.examples) == 5


def test_folder_grayscale_rgba_palette_are_converted(tmp_path):
  root = tmp_path / "root"
  save(str(root / "a" / "S1_gray.png"), patch(), "L")
  save(str(root / "a" / "S1_pal.gif"), patch(), "P")
  rgba = np.dstack([patch(), np.full((S, S), 255, np.uint8)])
  save(str(root / "b" / "S2_rgba.png"), rgba)
  save(str(root / "b" / "S2_16bit.tif"), (patch()[..., 0].astype(np.uint16) * 257))
  data = sources.read("folder", str(root), Options())
  check_examples(data)
  assert len(data.examples) == 4
  by = {e["source"]: e["image"] for e in data.examples}
  np.testing.assert_array_equal(by["b/S2_rgba.png"], patch())
  assert by["b/S2_16bit.tif"][C, C].tolist() == [FG[0]] * 3


def test_folder_wrong_size(tmp_path):
  root = tmp_path / "root"
  save(str(root / "a" / "S1_x.png"), patch())
  big = np.kron(patch(), np.ones((2, 2, 1), np.uint8))     # 80x80, nucleus still central
  save(str(root / "a" / "S2_big.png"), big)
  with pytest.raises(SourceError) as e:
    sources.read("folder", str(root), Options())
  msg = str(e.value)
  assert "S2_big.png" in msg and "80x80" in msg and "--resize" in msg
  data = sources.read("folder", str(root), Options(resize=True))
  assert all(ex["image"].shape == (S, S, 3) for ex in data.examples)
  data = sources.read("folder", str(root), Options(skip_bad=True))
  assert len(data.examples) == 1 and len(data.skipped) == 1


def test_folder_empty_root_and_stray_images(tmp_path):
  os.makedirs(tmp_path / "empty")
  with pytest.raises(SourceError, match="no class sub-folders"):
    sources.read("folder", str(tmp_path / "empty"), Options())
  with pytest.raises(SourceError, match="not a directory"):
    sources.read("folder", str(tmp_path / "missing"), Options())
  root = tmp_path / "r"
  save(str(root / "a" / "S1_x.png"), patch())
  save(str(root / "S1_stray.png"), patch())
  with pytest.raises(SourceError, match="S1_stray.png"):
    sources.read("folder", str(root), Options())


def test_folder_all_files_are_own_specimen_warns(tmp_path):
  root = tmp_path / "r"
  save(str(root / "a" / "one.png"), patch())
  save(str(root / "b" / "two.png"), patch())
  data = sources.read("folder", str(root), Options())
  assert "specimen_warning" in data.info


# ---------------------------------------------------------------------------------------------
# csv

def test_csv_patches(patch_manifest):
  data = sources.read("csv", patch_manifest, Options())
  check_examples(data)
  assert data.class_names == ["CD8+", "CD8-"]
  assert [(data.class_names[e["label"]], e["specimen"]) for e in data.examples] == [
      ("CD8+", "P1"), ("CD8-", "P2"), ("CD8+", "P3"), ("CD8-", "P1")]
  assert data.examples[1]["source"] == "img/b_é.png"
  assert all(dark_centroid(e["image"]) == (C, C) for e in data.examples[:2])
  check_split_disjoint(data)


def test_csv_numeric_labels_sort_numerically(tmp_path):
  save(str(tmp_path / "a.png"), patch())
  save(str(tmp_path / "b.png"), patch())
  m = write_csv(tmp_path / "m.csv", ["path", "label", "specimen"],
                [["a.png", "10", "s"], ["b.png", "2", "s"]])
  assert sources.read("csv", m, Options()).class_names == ["2", "10"]


def test_csv_crops_centred_and_border_reflected(tmp_path):
  img = blank(80, 100)
  points = [(30, 50), (97, 4), (2, 77), (60, 40)]
  for x, y in points:
    draw_square(img, x, y)
  save(str(tmp_path / "slides" / "region 1 ü.png"), img)
  rows = [["slides/region 1 ü.png", "pos" if i % 2 else "neg", f"P{i // 2}", x, y]
          for i, (x, y) in enumerate(points)]
  m = write_csv(tmp_path / "crops.csv", ["path", "label", "specimen", "x", "y"], rows)
  data = sources.read("csv", m, Options())
  check_examples(data)
  assert data.info["mode"] == "crops"
  padded = np.pad(img, ((S, S), (S, S), (0, 0)), mode="reflect")
  for e, (x, y) in zip(data.examples, points):
    assert (e["x"], e["y"]) == (x, y)
    assert e["image"][C, C].tolist() == list(FG)
    np.testing.assert_array_equal(e["image"], padded[S + y - C:S + y + C, S + x - C:S + x + C])
  # The interior nucleus lands exactly at the centre; border ones keep their centre pixel.
  assert dark_centroid(data.examples[0]["image"]) == (C, C)
  # Reflection mirrors the nucleus at x=97 across the right edge (x=99): pixels 100..101
  # of the padded image copy 98..97, so the crop holds FG beyond the edge too.
  crop = data.examples[1]["image"]
  assert (crop[C, C + 3:C + 5] == FG).all()
  data = sources.read("csv", m, Options(pad_mode="constant"))
  assert (data.examples[1]["image"][C, C + 3:] == 0).all()


def test_csv_missing_column(tmp_path):
  m = write_csv(tmp_path / "m.csv", ["file", "label"], [["a.png", "x"]])
  with pytest.raises(SourceError) as e:
    sources.read("csv", m, Options())
  msg = str(e.value)
  assert "'path'" in msg and "'specimen'" in msg and "['file', 'label']" in msg
  save(str(tmp_path / "a.png"), patch())
  ok = sources.read("csv", m, Options(path_column="file", specimen_column="label"))
  assert len(ok.examples) == 1
  m = write_csv(tmp_path / "m2.csv", ["path", "label", "specimen", "x"], [["a.png", "l", "s", 3]])
  with pytest.raises(SourceError, match="only one of"):
    sources.read("csv", m, Options())


def test_csv_row_with_missing_file(patch_manifest):
  with open(patch_manifest, "a", newline="", encoding="utf-8") as f:
    csv_module.writer(f).writerow(["img/gone.png", "CD8+", "P4"])
  with pytest.raises(SourceError) as e:
    sources.read("csv", patch_manifest, Options())
  assert "row 5 (line 6)" in str(e.value) and "img/gone.png" in str(e.value)
  data = sources.read("csv", patch_manifest, Options(skip_bad=True))
  assert len(data.examples) == 4 and data.skipped[0][0].endswith("gone.png")


def test_csv_duplicates(tmp_path):
  save(str(tmp_path / "a.png"), patch())
  m = write_csv(tmp_path / "m.csv", ["path", "label", "specimen"],
                [["a.png", "x", "s"], ["./a.png", "y", "s"]])
  with pytest.raises(SourceError) as e:
    sources.read("csv", m, Options())
  assert "duplicate" in str(e.value) and "line 3" in str(e.value) and "line 2" in str(e.value)
  save(str(tmp_path / "big.png"), blank(60, 60))
  m = write_csv(tmp_path / "c.csv", ["path", "label", "specimen", "x", "y"],
                [["big.png", "x", "s", 10, 10], ["big.png", "x", "s", 11, 10],
                 ["big.png", "y", "s", 10.0, 10]])
  with pytest.raises(SourceError, match="duplicate"):
    sources.read("csv", m, Options())
  data = sources.read("csv", m, Options(skip_bad=True))
  assert len(data.examples) == 2 and len(data.skipped) == 1


def test_csv_empty_manifest(tmp_path):
  empty = tmp_path / "empty.csv"
  empty.write_text("")
  with pytest.raises(SourceError, match="empty"):
    sources.read("csv", str(empty), Options())
  header_only = write_csv(tmp_path / "h.csv", ["path", "label", "specimen"], [])
  with pytest.raises(SourceError, match="no rows"):
    sources.read("csv", header_only, Options())


def test_csv_unknown_label(patch_manifest):
  with pytest.raises(SourceError) as e:
    sources.read("csv", patch_manifest, Options(class_names=["CD8+"]))
  assert "unknown label 'CD8-'" in str(e.value) and "row 2 (line 3)" in str(e.value)
  data = sources.read("csv", patch_manifest, Options(class_names=["CD8+", "other"], skip_bad=True))
  assert data.class_names == ["CD8+", "other"] and len(data.examples) == 2
  assert len(data.skipped) == 2


def test_csv_wrong_size_and_corrupt(tmp_path):
  save(str(tmp_path / "big.png"), blank(50, 30))
  (tmp_path / "bad.png").write_bytes(b"garbage")
  m = write_csv(tmp_path / "m.csv", ["path", "label", "specimen"],
                [["big.png", "x", "s"], ["bad.png", "x", "s"]])
  with pytest.raises(SourceError) as e:
    sources.read("csv", m, Options())
  assert "30x50" in str(e.value) and "--resize" in str(e.value)
  with pytest.raises(SourceError, match="bad.png"):
    sources.read("csv", m, Options(resize=True))
  data = sources.read("csv", m, Options(resize=True, skip_bad=True))
  assert len(data.examples) == 1 and "corrupt" in data.skipped[0][1]


# ---------------------------------------------------------------------------------------------
# PanNuke

def test_pannuke_crops_labels_specimens(pannuke_root):
  data = sources.read("pannuke", pannuke_root, Options())
  check_examples(data)
  assert data.class_names == ["neoplastic", "inflammatory", "connective", "dead", "epithelial"]
  got = [(e["source"], data.class_names[e["label"]], e["x"], e["y"], e["specimen"])
         for e in data.examples]
  assert got == [
      ("fold_1/0", "neoplastic", 20.0, 30.0, "fold_1/0"),
      ("fold_1/0", "connective", 45.0, 12.0, "fold_1/0"),
      ("fold_1/0", "connective", 50.0, 50.0, "fold_1/0"),
      ("fold_1/1", "epithelial", 31.0, 61.0, "fold_1/1"),
      ("fold_2/0", "inflammatory", 10.0, 10.0, "fold_2/0"),
      ("fold_2/0", "dead", 40.0, 20.0, "fold_2/0"),
      ("fold_3/0", "inflammatory", 33.0, 33.0, "fold_3/0"),
  ]
  for e in data.examples:
    assert e["image"][C, C].tolist() == list(FG)
    if e["source"] != "fold_1/1":
      assert dark_centroid(e["image"][C - 3:C + 4, C - 3:C + 4]) == (3, 3)
  # The bottom-border nucleus (rows 59..63 of 64) is mirrored below the edge by 'reflect'.
  border = data.examples[3]["image"]
  assert (border[C + 3:C + 5, C] == FG).all()
  assert data.info["nuclei_per_tissue"] == {"Colon": 6, "Breast": 1}
  assert set(data.info["folds"]) == {"fold_1", "fold_2", "fold_3"}
  check_split_disjoint(data)


def test_pannuke_fold_specimens_and_class_subset(pannuke_root):
  data = sources.read("pannuke", pannuke_root, Options(pannuke_specimen="fold"))
  assert sorted({e["specimen"] for e in data.examples}) == ["fold_1", "fold_2", "fold_3"]
  check_split_disjoint(data)
  data = sources.read("pannuke", pannuke_root,
                      Options(class_names=["inflammatory", "neoplastic"]))
  assert [data.class_names[e["label"]] for e in data.examples] == [
      "neoplastic", "inflammatory", "inflammatory"]
  assert data.info["dropped_by_class"] == 4
  with pytest.raises(SourceError, match="unknown class"):
    sources.read("pannuke", pannuke_root, Options(class_names=["tumour"]))


def test_pannuke_single_fold_root_and_errors(pannuke_root, tmp_path):
  one = os.path.join(pannuke_root, "fold_2", "Fold 2")
  data = sources.read("pannuke", one, Options())
  assert {e["specimen"] for e in data.examples} == {"Fold 2/0"}
  os.makedirs(tmp_path / "nothing here")
  with pytest.raises(SourceError, match="no images.npy"):
    sources.read("pannuke", str(tmp_path / "nothing here"), Options())
  os.remove(os.path.join(pannuke_root, "fold_3", "Fold 3", "masks", "fold3", "masks.npy"))
  with pytest.raises(SourceError, match="no masks.npy next to .*fold3"):
    sources.read("pannuke", pannuke_root, Options())
  data = sources.read("pannuke", pannuke_root, Options(skip_bad=True))
  assert len(data.skipped) == 1 and len(data.examples) == 6


def test_pannuke_repacked_layout(tmp_path):
  """images/foldK + masks/foldK side by side (a common re-packing) still pairs by folder name."""
  src = make_pannuke_fold(str(tmp_path / "src"), 1, [[(0, 1, 20, 30)]])
  src2 = make_pannuke_fold(str(tmp_path / "src"), 2, [[(4, 1, 40, 10)]])
  root = tmp_path / "repacked"
  for base, k in ((src, 1), (src2, 2)):
    for sub in ("images", "masks"):
      os.renames(os.path.join(base, sub, f"fold{k}"), root / sub / f"fold{k}")
  data = sources.read("pannuke", str(root), Options())
  assert [(e["source"], e["label"]) for e in data.examples] == [("fold1/0", 0), ("fold2/0", 4)]


def test_pannuke_mismatched_arrays_skip(pannuke_root):
  bad = os.path.join(pannuke_root, "fold_3", "Fold 3", "masks", "fold3", "masks.npy")
  np.save(bad, np.zeros((1, 32, 32, 6)))
  with pytest.raises(SourceError, match="does not match"):
    sources.read("pannuke", pannuke_root, Options())
  data = sources.read("pannuke", pannuke_root, Options(skip_bad=True))
  assert len(data.skipped) == 1 and len(data.examples) == 6


# ---------------------------------------------------------------------------------------------
# Lizard

def test_lizard_crops_labels_specimens(lizard_root):
  data = sources.read("lizard", lizard_root, Options())
  check_examples(data)
  assert data.class_names == ["neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil",
                              "connective"]
  got = [(e["source"], data.class_names[e["label"]], e["x"], e["y"], e["specimen"])
         for e in data.examples]
  assert got == [
      ("consep_1", "lymphocyte", 100.0, 20.0, "consep_1"),
      ("consep_1", "epithelial", 15.0, 70.0, "consep_1"),
      ("consep_1", "connective", 117.5, 87.5, "consep_1"),   # clipped 3x3 corner square
      ("consep_1", "plasma", 60.0, 45.0, "consep_1"),        # from the stored centroid
      ("dpath_2", "neutrophil", 40.0, 30.0, "dpath_2"),
      ("dpath_2", "eosinophil", 10.0, 50.0, "dpath_2"),
      ("dpath_15", "lymphocyte", 70.0, 10.0, "dpath_15"),
  ]
  for e in data.examples:
    if e["source"] == "consep_1" and e["label"] == 3:
      continue    # no nucleus drawn for the pixel-less row
    assert e["image"][C, C].tolist() == list(FG)
    if 3 <= e["x"] <= 116 and 3 <= e["y"] <= 60:
      assert dark_centroid(e["image"][C - 3:C + 4, C - 3:C + 4]) == (3, 3)
  assert data.info["stored_centroid_offset"] == [0.0, 0.0]
  assert data.info["centroid_from_mat"] == 1
  check_split_disjoint(data)


def test_lizard_slide_and_fold_specimens(lizard_root):
  data = sources.read("lizard", lizard_root, Options(lizard_specimen="slide"))
  specs = {e["source"]: e["specimen"] for e in data.examples}
  assert specs["dpath_2"] == specs["dpath_15"] == "dpath:1902160001_2019-06-11 12_36_32"
  assert specs["consep_1"] == "consep_1"
  data = sources.read("lizard", lizard_root, Options(lizard_specimen="fold"))
  assert {e["source"]: e["specimen"] for e in data.examples} == {
      "consep_1": "fold3", "dpath_2": "fold2", "dpath_15": "fold2"}


def test_lizard_label_without_image_and_bad_class(lizard_root):
  os.remove(os.path.join(lizard_root, "lizard_images2", "Lizard_Images2", "dpath_15.png"))
  with pytest.raises(SourceError) as e:
    sources.read("lizard", lizard_root, Options())
  assert "dpath_15" in str(e.value) and "lizard_images" in str(e.value)
  data = sources.read("lizard", lizard_root, Options(skip_bad=True))
  assert len(data.skipped) == 1 and len(data.examples) == 6
  make_lizard_image(lizard_root, "lizard_images1", "crag_1", 50, 50, [(1, 9, 25, 25)])
  with pytest.raises(SourceError, match=r"crag_1.*outside 1..6"):
    sources.read("lizard", lizard_root, Options())


def test_lizard_missing_keys(lizard_root):
  labels = os.path.join(lizard_root, "lizard_labels", "Lizard_Labels", "Labels")
  scipy.io.savemat(os.path.join(labels, "dpath_2.mat"), {"type_map": np.zeros((64, 80))})
  with pytest.raises(SourceError) as e:
    sources.read("lizard", lizard_root, Options())
  assert "dpath_2.mat" in str(e.value) and "inst_map" in str(e.value)


# ---------------------------------------------------------------------------------------------
# ihc_demo (real tissue; the bundled image loads offline)

@pytest.fixture(scope="module")
def ihc_data():
  return sources.read("ihc_demo", "", Options())


def test_ihc_demo_counts_threshold_and_crops(ihc_data):
  from skimage import data as skdata
  check_examples(ihc_data)
  counts = ihc_data.class_counts()
  assert ihc_data.class_names == ["dab_negative", "dab_positive"]
  assert counts["dab_negative"] >= 100 and counts["dab_positive"] >= 100
  assert 300 <= sum(counts.values()) <= 400
  assert 0.03 < ihc_data.info["ihc_threshold"] < 0.07
  rgb = skdata.immunohistochemistry()
  for e in ihc_data.examples:
    cx, cy = patch_reading.centre_pixel(e["x"], e["y"])
    if C <= cx <= 512 - C and C <= cy <= 512 - C:
      np.testing.assert_array_equal(e["image"], rgb[cy - C:cy + C, cx - C:cx + C])
  assert ihc_data.info["num_specimens"] == 16
  check_split_disjoint(ihc_data)


def test_ihc_demo_labels_follow_dab(ihc_data):
  from skimage import color
  from skimage import data as skdata
  dab = color.rgb2hed(skdata.immunohistochemistry())[..., 2]
  means = {}
  for e in ihc_data.examples:
    cx, cy = patch_reading.centre_pixel(e["x"], e["y"])
    if 12 <= cx < 500 and 12 <= cy < 500:
      means.setdefault(e["label"], []).append(dab[cy - 5:cy + 6, cx - 5:cx + 6].mean())
  assert np.mean(means[1]) > 2 * np.mean(means[0])


def test_ihc_demo_fixed_threshold_and_grid():
  data = sources.read("ihc_demo", None, Options(ihc_threshold=1e9, ihc_grid=2))
  assert data.class_counts()["dab_positive"] == 0 and data.info["ihc_threshold"] == 1e9
  assert {e["specimen"] for e in data.examples} == {
      "tile_r0_c0", "tile_r0_c1", "tile_r1_c0", "tile_r1_c1"}


# ---------------------------------------------------------------------------------------------
# splits

def test_assign_splits_deterministic_disjoint_nonempty():
  specs = [f"P{i}" for i in range(20)] * 3
  a = splits.assign_splits(specs, seed=1)
  assert a == splits.assign_splits(list(reversed(specs)), seed=1)
  assert a != splits.assign_splits(specs, seed=2)
  assert sorted(a) == sorted(set(specs))
  counts = {s: list(a.values()).count(s) for s in ("train", "val", "test")}
  assert counts == {"train": 14, "val": 3, "test": 3}
  for n in (3, 4, 5, 7):
    a = splits.assign_splits([f"s{i}" for i in range(n)], seed=0)
    assert set(a.values()) == {"train", "val", "test"}


def test_assign_splits_too_few_specimens_and_bad_fractions():
  with pytest.raises(ValueError) as e:
    splits.assign_splits(["a", "b", "a"], seed=0)
  assert "2 distinct specimen" in str(e.value) and "at least 3" in str(e.value)
  with pytest.raises(ValueError, match="sum to 1"):
    splits.assign_splits(["a", "b"], {"train": 0.5, "test": 0.6})
  with pytest.raises(ValueError, match="> 0"):
    splits.assign_splits(["a", "b"], {"train": 1.0, "test": 0.0})
  assert set(splits.assign_splits(["a", "b"], {"train": 0.9, "test": 0.1}).values()) == {
      "train", "test"}


def test_check_disjoint_names_offenders():
  splits.check_disjoint({"train": ["a", "b"], "test": ["c"]})
  with pytest.raises(ValueError) as e:
    splits.check_disjoint({"train": ["a", "b"], "val": ["b"], "test": ["c", "a"]})
  assert "'a' in ['test', 'train']" in str(e.value) and "'b' in ['train', 'val']" in str(e.value)
