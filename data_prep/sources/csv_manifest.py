"""CSV manifest of patch files, or of crop centres in larger images.

Format (our own convention; a UTF-8 CSV with a header row, BOM allowed, as Excel writes it):

    path,label,specimen                 one patch file per row
    tumour/P07_001.png,tumour,P07

    path,label,specimen,x,y             x, y present: a crop centred at (x, y) of the image
    slides/P07 region 1.png,CD8+,P07,120.5,88

* Header and rows are read by cellvit_jax/data/manifest_rows.py (prediction reads the same
  files).  Column names are Options.path_column / label_column / specimen_column / x_column /
  y_column.  Other columns are ignored.  Relative paths are relative to the CSV's folder.
* x is the column and y the row, in pixels, 0-based (see cellvit_jax/data/patch_reading.py);
  the crop keeps its centre pixel at [size // 2, size // 2] and is padded with
  Options.pad_mode where it leaves the image.  Each source image is decoded once however many
  rows point at it.
* Without x, y every file is one patch of Options.patch_size (others refused or resized).
* Labels are strings; class_names = Options.class_names if given (then a label outside it is
  an "unknown label"), else the sorted distinct labels (numeric order when all are integers).
* Errors (SourceError naming the CSV row (1 = first data row) and line, and the fix;
  row-level ones become counted skips with skip_bad): missing CSV, empty manifest, a missing
  column (named, with the columns found), only one of x / y, an empty path / label /
  specimen cell, a non-numeric x or y, a centre outside the image, a missing or corrupt file,
  a duplicate path (patches) or duplicate (path, x, y) (crops), an unknown label.
"""
import math
import os

from cellvit_jax.data import manifest_rows, patch_reading
from cellvit_jax.data.patch_reading import Options, SourceError
from data_prep.sources import common
from data_prep.sources.common import SourceData


def read(input_path: str, options: Options) -> SourceData:
  """Reads a CSV manifest; see the module docstring for the format and errors."""
  manifest = os.path.abspath(input_path)
  columns, rows = manifest_rows.read_rows(manifest, options)
  required = [options.path_column, options.label_column, options.specimen_column]
  missing = [c for c in required if c not in columns]
  if missing:
    raise SourceError(f"CSV manifest {manifest}: missing column(s) {missing}; columns found: "
                      f"{columns}.  Rename them or set path_column / label_column / "
                      "specimen_column")
  has_x, has_y = options.x_column in columns, options.y_column in columns
  if has_x != has_y:
    raise SourceError(f"CSV manifest {manifest}: has only one of the crop-centre columns "
                      f"{options.x_column!r}, {options.y_column!r}; give both or neither")
  crops = has_x
  base = os.path.dirname(manifest)
  data = SourceData(class_names=[], info={"kind": "csv", "manifest": manifest,
                                          "mode": "crops" if crops else "patches"})

  row_of_line = {n: i + 1 for i, (n, _) in enumerate(rows)}

  def where(n):
    # Data row number (1 = first row under the header) and the file's line number.
    return f"CSV manifest {manifest} row {row_of_line[n]} (line {n})"

  # Pass 1: validate the rows (cheap) before decoding any image.
  records = []     # (line, abs path, label, specimen, x, y)
  seen = {}        # duplicate key -> line
  for n, row in rows:
    rel = (row.get(options.path_column) or "").strip()
    label = patch_reading.nfc((row.get(options.label_column) or "").strip())
    specimen = (row.get(options.specimen_column) or "").strip()
    empty = [c for c, v in ((options.path_column, rel), (options.label_column, label),
                            (options.specimen_column, specimen)) if not v]
    if empty:
      common.bad_input(options, data, f"{manifest}:{n}", f"{where(n)}: empty {empty}; fill it in")
      continue
    path = os.path.normpath(os.path.join(base, os.path.expanduser(rel)))
    x = y = -1.0
    if crops:
      try:
        x, y = float(row[options.x_column]), float(row[options.y_column])
        if not (math.isfinite(x) and math.isfinite(y)):
          raise ValueError
      except (TypeError, ValueError):
        common.bad_input(options, data, f"{manifest}:{n}",
                         f"{where(n)}: x={row.get(options.x_column)!r}, y="
                         f"{row.get(options.y_column)!r} are not numbers; give pixel coordinates")
        continue
    key = (os.path.normcase(path), x, y) if crops else os.path.normcase(path)
    if key in seen:
      what = f"(path, x, y) {(rel, x, y)}" if crops else f"path {rel!r}"
      common.bad_input(options, data, f"{manifest}:{n}", f"{where(n)}: duplicate {what}, "
                       f"first on line {seen[key]}; remove one of the rows")
      continue
    seen[key] = n
    if options.class_names is not None and label not in options.class_names:
      common.bad_input(options, data, f"{manifest}:{n}", f"{where(n)}: unknown label {label!r}, "
                       f"not in class_names {options.class_names}; fix the label or class_names")
      continue
    if not os.path.isfile(path):
      common.bad_input(options, data, path, f"{where(n)}: file {rel!r} not found (looked for "
                       f"{path}; relative paths are relative to the CSV's folder)")
      continue
    records.append((n, path, label, specimen, x, y))

  if options.class_names is not None:
    class_names = list(options.class_names)
  else:
    class_names = common.sort_class_names(r[2] for r in records)
  index = {c: i for i, c in enumerate(class_names)}

  # Pass 2: decode each file once (rows grouped by file), then restore manifest order.
  by_path = {}
  for r in records:
    by_path.setdefault(r[1], []).append(r)
  out = []
  for path, group in by_path.items():
    try:
      image = patch_reading.load_rgb(path, options)
    except SourceError as e:
      for r in group:
        common.bad_input(options, data, path, f"{where(r[0])}: {e}")
      continue
    cropper = patch_reading.Cropper(image, options, name=path) if crops else None
    for n, _, label, specimen, x, y in group:
      rel = os.path.relpath(path, base).replace(os.sep, "/")
      try:
        patch = cropper.crop(x, y) if crops else patch_reading.to_patch_size(image, path, options)
      except SourceError as e:
        common.bad_input(options, data, path, f"{where(n)}: {e}")
        continue
      out.append((n, common.make_example(patch, index[label], specimen, rel, x, y)))
  out.sort(key=lambda t: t[0])
  data.examples = [e for _, e in out]
  if not data.examples:
    raise SourceError(f"CSV manifest {manifest}: no usable rows (skipped {len(data.skipped)})")
  if options.class_names is None:
    # Labels whose every row was skipped would leave classes without data; drop them.
    used = sorted({e["label"] for e in data.examples})
    if len(used) != len(class_names):
      remap = {old: new for new, old in enumerate(used)}
      class_names = [class_names[i] for i in used]
      for e in data.examples:
        e["label"] = remap[e["label"]]
  data.class_names = class_names
  data.info["num_specimens"] = len({e["specimen"] for e in data.examples})
  return data
