"""The rows of a CSV manifest of patch files: header, columns and numbered data rows.

A manifest is a UTF-8 CSV with a header row (a BOM is allowed, as Excel writes it), one row per
patch file or per crop centre.  The training reader (`data_prep/sources/csv_manifest.py`, which
needs label and specimen columns) and prediction (`cellvit_jax/data/patch_files.py`, which needs
only the path column) read it through `read_rows`, so both accept the same files.  Rows whose
cells are all empty (',,,') are not data; column names and keys are stripped of spaces.
"""
import csv
import os

from cellvit_jax.data.patch_reading import Options, SourceError


def read_rows(path: str, options: Options):
  """(columns, [(line number, row dict)]) of the manifest, or SourceError."""
  if not os.path.isfile(path):
    raise SourceError(f"CSV manifest {path}: file not found")
  try:
    with open(path, newline="", encoding="utf-8-sig") as f:
      reader = csv.DictReader(f)
      columns = reader.fieldnames
      rows = []
      for row in reader:
        if all(not (v or "").strip() for v in row.values() if isinstance(v, str)):
          continue   # ',,,' rows are not data (csv already drops empty lines)
        rows.append((reader.line_num, row))
  except UnicodeDecodeError as e:
    raise SourceError(f"CSV manifest {path}: not UTF-8 text ({e}); save it as UTF-8 CSV") from e
  if not columns:
    raise SourceError(f"CSV manifest {path} is empty; it needs a header row "
                      f"'{options.path_column},{options.label_column},{options.specimen_column}' "
                      "and one row per patch")
  columns = [c.strip() for c in columns]
  rows = [(n, {(k or "").strip(): v for k, v in row.items()}) for n, row in rows]
  if not rows:
    raise SourceError(f"CSV manifest {path} has a header but no rows; add one row per patch")
  return columns, rows
