"""Folder tree of patch files: `ROOT/<class>/<file>`, one patch per file.

Format (our own convention, the usual ImageFolder layout):

    ROOT/
      <class name>/            one folder per class; class names = folder names, sorted
        P07_cell001.png        png / jpg / jpeg / tif / tiff / bmp / gif / webp / ppm / pgm
        sub/P08_cell002.png    sub-folders are read too; they belong to the enclosing class
      README.txt               files directly in ROOT that are not images are ignored

* Every patch becomes one example with x = y = -1 and source = its path relative to ROOT.
  Patches of another size than Options.patch_size are refused (or resized with resize=True).
* Specimen: by default the part of the file stem before the first '_' ('P07_cell001.png' ->
  'P07'); a stem without '_' is its own specimen (info['specimen_warning'] says so when every
  patch ends up its own specimen, because a split by specimen is then a split by patch).
  Options.specimen_pattern: a regex with a named group `specimen` searched in the file name.
  Options.specimen_csv: a sidecar CSV `file,specimen` (see Options).
* Errors (SourceError naming the input and the fix; with skip_bad the input is skipped and
  counted in SourceData.skipped): missing / empty root, image files directly in ROOT (no
  class), an empty class folder (skipped: the class is dropped unless class_names fixes the
  list), a corrupt image (image extension that does not decode), a non-image file inside a
  class folder (any other extension), a folder name outside Options.class_names ("unknown
  label"), a file the specimen rule cannot name.  Hidden files (.DS_Store, ._x.png) and
  Thumbs.db / desktop.ini are OS droppings and always ignored (counted in info['ignored']).
* Unicode and spaces in paths are fine (names are compared in Unicode NFC form).
"""
import csv
import os
import re

from cellvit_jax.data import patch_reading
from cellvit_jax.data.patch_reading import Options, SourceError
from data_prep.sources import common
from data_prep.sources.common import SourceData

DEFAULT_SPECIMEN_RULE = "file stem before the first '_'"


def _specimen_rule(options: Options):
  """A function file-relative-path -> specimen id (or None when the rule cannot name it)."""
  if options.specimen_pattern and options.specimen_csv:
    raise SourceError("give specimen_pattern or specimen_csv, not both")
  if options.specimen_csv:
    table = _read_specimen_csv(options.specimen_csv)
    by_name = {}
    for key, spec in table.items():
      by_name.setdefault(os.path.basename(key), []).append(spec)

    def from_csv(rel):
      rel = patch_reading.nfc(rel)
      if rel in table:
        return table[rel]
      specs = by_name.get(os.path.basename(rel), [])
      return specs[0] if len(specs) == 1 else None
    return from_csv, f"specimen_csv {options.specimen_csv}"
  if options.specimen_pattern:
    try:
      pattern = re.compile(options.specimen_pattern)
    except re.error as e:
      raise SourceError(f"specimen_pattern {options.specimen_pattern!r} is not a valid regex: {e}")
    if "specimen" not in pattern.groupindex:
      raise SourceError(f"specimen_pattern {options.specimen_pattern!r} has no named group "
                        "'specimen'; write it like r'^(?P<specimen>[^_]+)_'")

    def from_pattern(rel):
      m = pattern.search(os.path.basename(rel))
      return m.group("specimen") if m and m.group("specimen") else None
    return from_pattern, f"specimen_pattern {options.specimen_pattern!r}"

  def before_underscore(rel):
    stem = os.path.splitext(os.path.basename(rel))[0]
    return stem.split("_", 1)[0] or None
  return before_underscore, DEFAULT_SPECIMEN_RULE


def _read_specimen_csv(path: str) -> dict[str, str]:
  """{relative path or file name (NFC, '/' separators): specimen} from a `file,specimen` CSV."""
  if not os.path.isfile(path):
    raise SourceError(f"specimen_csv {path}: file not found")
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    found = reader.fieldnames or []
    if "file" not in found or "specimen" not in found:
      raise SourceError(f"specimen_csv {path}: needs columns 'file' and 'specimen', found "
                        f"{found}")
    table = {}
    for row in reader:
      key = patch_reading.nfc((row["file"] or "").strip().replace("\\", "/"))
      spec = (row["specimen"] or "").strip()
      if not key or not spec:
        raise SourceError(f"specimen_csv {path} line {reader.line_num}: empty file or specimen")
      if key in table and table[key] != spec:
        raise SourceError(f"specimen_csv {path} line {reader.line_num}: {key} listed twice with "
                          f"different specimens ({table[key]!r}, {spec!r})")
      table[key] = spec
  if not table:
    raise SourceError(f"specimen_csv {path}: no rows")
  return table


def read(input_path: str, options: Options) -> SourceData:
  """Reads `ROOT/<class>/<file>` patches; see the module docstring for the format and errors."""
  root = os.path.abspath(input_path)
  if not os.path.isdir(root):
    raise SourceError(f"folder root {input_path} is not a directory; give the folder that holds "
                      "one sub-folder per class")
  specimen_of, rule = _specimen_rule(options)
  data = SourceData(class_names=[], info={"kind": "folder", "root": root, "specimen_rule": rule})
  ignored = []

  entries = sorted(os.listdir(root))
  class_dirs = [e for e in entries if os.path.isdir(os.path.join(root, e))
                and not patch_reading.is_ignored_file(e)]
  for e in entries:
    p = os.path.join(root, e)
    if os.path.isfile(p):
      if patch_reading.is_image_name(e):
        common.bad_input(options, data, p, f"{p}: image directly in the folder root has no class; "
                         "move it into ROOT/<class>/")
      else:
        ignored.append(p)
  if not class_dirs:
    raise SourceError(f"folder root {root} has no class sub-folders; expected ROOT/<class>/<image "
                      "file>")

  if options.class_names is not None:
    class_names = list(options.class_names)
  else:
    class_names = common.sort_class_names(patch_reading.nfc(d) for d in class_dirs)

  per_class = {}   # class name -> list of (relative path, image, specimen)
  for d in class_dirs:
    cls = patch_reading.nfc(d)
    cdir = os.path.join(root, d)
    if cls not in class_names:
      common.bad_input(options, data, cdir,
                       f"{cdir}: unknown label {cls!r}, not in class_names {class_names}; "
                       "add it to class_names or remove the folder")
      continue
    files = []
    for dirpath, dirnames, filenames in os.walk(cdir):
      dirnames[:] = sorted(n for n in dirnames if not patch_reading.is_ignored_file(n))
      for name in sorted(filenames):
        p = os.path.join(dirpath, name)
        (ignored if patch_reading.is_ignored_file(name) else files).append(p)
    if not files:
      common.bad_input(options, data, cdir, f"{cdir}: class folder {cls!r} holds no image files; "
                       "add patches or remove the folder")
      continue
    items = per_class.setdefault(cls, [])
    for p in files:
      rel = patch_reading.nfc(os.path.relpath(p, root).replace(os.sep, "/"))
      if not patch_reading.is_image_name(p):
        common.bad_input(options, data, p, f"{p}: not an image file (extension "
                         f"{os.path.splitext(p)[1] or 'none'!r}; images are "
                         f"{', '.join(patch_reading.IMAGE_EXTENSIONS)}); remove it")
        continue
      specimen = specimen_of(rel)
      if specimen is None:
        common.bad_input(options, data, p, f"{p}: {rule} gives no specimen for this file; fix the "
                         "file name or the specimen option")
        continue
      try:
        image = patch_reading.to_patch_size(patch_reading.load_rgb(p, options), p, options)
      except SourceError as e:
        common.bad_input(options, data, p, str(e))
        continue
      items.append((rel, image, specimen))

  if options.class_names is None:
    # An inferred class that ended with no patch (folder skipped or all files bad) is dropped,
    # so no label index points at a class without data.
    class_names = [c for c in class_names if per_class.get(c)]
  if not class_names or not any(per_class.values()):
    raise SourceError(f"folder root {root}: no usable patches found (skipped {len(data.skipped)})")
  data.class_names = class_names
  for label, cls in enumerate(class_names):
    for rel, image, specimen in per_class.get(cls, []):
      data.examples.append(common.make_example(image, label, specimen, rel))

  data.info["ignored"] = len(ignored)
  n_specimens = len({e["specimen"] for e in data.examples})
  data.info["num_specimens"] = n_specimens
  if n_specimens == len(data.examples) and n_specimens > 1:
    data.info["specimen_warning"] = (f"every patch is its own specimen under the {rule} rule, so "
                                     "a split by specimen is a split by patch")
    common.log.warning("folder %s: %s", root, data.info["specimen_warning"])
  return data
