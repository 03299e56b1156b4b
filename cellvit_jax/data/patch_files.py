"""Unlabelled patches for prediction: a folder of image files, or a CSV of files or crop centres.

    folder   every image file under the folder, recursively (any layout: flat, or the
             training ROOT/<class>/ tree), in sorted path order; hidden files and OS
             droppings ignored.  Each file is one patch.
    CSV      the training manifest format (manifest_rows.py; data_prep/sources/csv_manifest.py)
             without the need for a label or specimen: a `path` column (relative to the
             CSV's folder), optional `x`, `y` crop centres (then each row is a crop of a
             larger image, padded where it leaves it), any other columns carried to the
             output untouched.

Image decoding, colour rules, resizing and crops are those the data_prep readers use
(patch_reading.py), so a patch is read exactly as it would be for training.
"""
import dataclasses
import math
import os

import numpy as np

from cellvit_jax.data import manifest_rows, patch_reading
from cellvit_jax.data.patch_reading import Options, SourceError


@dataclasses.dataclass
class Patches:
  images: np.ndarray                 # uint8 (N, size, size, 3)
  rows: list                         # per patch: {"path": ..., [x, y,] other CSV columns}
  columns: list                      # output column order for `rows`
  skipped: list                      # (input, reason) under skip_bad


def _from_folder(root: str, options: Options) -> Patches:
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if not patch_reading.is_ignored_file(d))
    files += [os.path.join(dirpath, n) for n in sorted(filenames)
              if not patch_reading.is_ignored_file(n) and patch_reading.is_image_name(n)]
  if not files:
    raise SourceError(f"predict input folder {root} holds no image files "
                      f"({', '.join(patch_reading.IMAGE_EXTENSIONS)}); give a folder of "
                      "patches or a CSV")
  images, rows, skipped = [], [], []
  for p in files:
    rel = patch_reading.nfc(os.path.relpath(p, root).replace(os.sep, "/"))
    try:
      images.append(patch_reading.to_patch_size(patch_reading.load_rgb(p, options), p, options))
    except SourceError as e:
      if not options.skip_bad:
        raise SourceError(f"{e}; {patch_reading.SKIP_HINT}") from None
      skipped.append((p, str(e)))
      continue
    rows.append({"path": rel})
  if not images:
    raise SourceError(f"predict input folder {root}: no usable patches (skipped {len(skipped)})")
  return Patches(np.stack(images), rows, ["path"], skipped)


def _from_csv(manifest: str, options: Options) -> Patches:
  columns, table = manifest_rows.read_rows(manifest, options)
  if options.path_column not in columns:
    raise SourceError(f"CSV {manifest}: no {options.path_column!r} column (columns: {columns}); "
                      "name the patch file column 'path' or set config.predict.path_column")
  crops = options.x_column in columns and options.y_column in columns
  base = os.path.dirname(manifest)
  images, rows, skipped, decoded = [], [], [], {}
  for n, row in table:
    rel = (row.get(options.path_column) or "").strip()
    where = f"CSV {manifest} line {n}"
    try:
      if not rel:
        raise SourceError(f"{where}: empty {options.path_column!r}")
      path = os.path.normpath(os.path.join(base, os.path.expanduser(rel)))
      if path not in decoded:
        decoded.clear()  # rows of one image are usually together: keep only the last one
        decoded[path] = patch_reading.load_rgb(path, options)
      if crops:
        x, y = float(row[options.x_column]), float(row[options.y_column])
        if not (math.isfinite(x) and math.isfinite(y)):
          raise SourceError(f"{where}: x, y must be finite pixel coordinates")
        patch = patch_reading.Cropper(decoded[path], options, name=path).crop(x, y)
      else:
        patch = patch_reading.to_patch_size(decoded[path], path, options)
    except (SourceError, ValueError) as e:
      message = str(e) if str(e).startswith(where) else f"{where}: {e}"
      if not options.skip_bad:
        raise SourceError(f"{message}; {patch_reading.SKIP_HINT}") from None
      skipped.append((f"{manifest}:{n}", message))
      continue
    images.append(patch)
    rows.append({c: row.get(c, "") for c in columns})
  if not images:
    raise SourceError(f"CSV {manifest}: no usable rows (skipped {len(skipped)})")
  return Patches(np.stack(images), rows, list(columns), skipped)


def read_patches(input_path: str, patch_size: int, *, resize: bool = False, skip_bad: bool = False,
                 path_column: str = "path", x_column: str = "x", y_column: str = "y") -> Patches:
  """A folder or a .csv file -> Patches at patch_size; SourceError naming the input if unusable."""
  options = Options(patch_size=patch_size, resize=resize, skip_bad=skip_bad,
                    path_column=path_column, x_column=x_column, y_column=y_column)
  path = os.path.abspath(os.path.expanduser(input_path))
  if os.path.isdir(path):
    return _from_folder(path, options)
  if os.path.isfile(path) and path.lower().endswith(".csv"):
    return _from_csv(path, options)
  raise SourceError(f"predict input {input_path!r} is neither a folder nor a .csv file; pass a "
                    "folder of patch images or a CSV with a 'path' column")
