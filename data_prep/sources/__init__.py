"""Readers that turn a user's or a public dataset into nucleus-centred patch_size crops.

    from data_prep import sources
    data = sources.read("folder", "/data/my_cells", sources.Options(skip_bad=True))
    data.class_names, data.examples[0]["image"].shape   # [...], (40, 40, 3)

Kinds (one module each; module docstrings give the input format and where it was learned):
  folder    ROOT/<class>/<patch file>
  csv       (csv_manifest.py) manifest of patch files, or of (x, y) crop centres in larger images
  pannuke   the PanNuke release folds (images.npy / masks.npy / types.npy)
  lizard    the Lizard release (png images + .mat labels)
  ihc_demo  scikit-image's bundled colon IHC image, DAB-positive vs negative nuclei
"""
from cellvit_jax.data.patch_reading import Options, SourceError
from data_prep.sources import csv_manifest, folder, ihc_demo, lizard, pannuke
from data_prep.sources.common import SourceData

KINDS = {
    "folder": folder.read,
    "csv": csv_manifest.read,
    "pannuke": pannuke.read,
    "lizard": lizard.read,
    "ihc_demo": ihc_demo.read,
}


def read(kind: str, input_path: str, options: Options = None) -> SourceData:
  """Runs the reader of `kind` on input_path; ValueError naming the valid kinds if unknown."""
  if kind not in KINDS:
    raise ValueError(f"unknown source kind {kind!r}; valid kinds: {', '.join(sorted(KINDS))}")
  return KINDS[kind](input_path, options if options is not None else Options())


__all__ = ["KINDS", "Options", "SourceData", "SourceError", "read"]
