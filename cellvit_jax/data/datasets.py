"""Finding, building on first use, and opening cell-patch datasets by name.

A dataset lives at `<data_dir>/<name>/1.0.0/` (TFDS layout, ArrayRecord files) with our
sidecar `cellvit_meta.json`. `data_dir` is `config.dataset.data_dir`, else $CELLVIT_DATA,
else ~/tensorflow_datasets. The embedded `synthetic_cells` family is built on first use;
every other dataset is built once with `python -m data_prep.build`.
"""
import dataclasses
import json
import os
from typing import List

import numpy as np

from cellvit_jax.data import synthetic_cells, synthetic_cells_v3, tfds_writer

SYNTHETIC = "synthetic_cells"
# Renderer of each recipe name; a name `<recipe>_<anything>` (e.g. synthetic_cells_v3_small)
# uses that recipe, any other synthetic_cells* name the default one.
RECIPES = {SYNTHETIC: synthetic_cells, "synthetic_cells_v2": synthetic_cells,
           "synthetic_cells_v3": synthetic_cells_v3}


def recipe_for(name: str):
  """The renderer module (RECIPE_VERSION, generate_specimen, examples) of a synthetic name."""
  for recipe in ("synthetic_cells_v3", "synthetic_cells_v2"):
    if name == recipe or name.startswith(recipe + "_"):
      return RECIPES[recipe]
  return RECIPES[SYNTHETIC]


def resolve_data_dir(data_dir: str = "") -> str:
  return os.path.abspath(os.path.expanduser(
      data_dir or os.environ.get("CELLVIT_DATA") or "~/tensorflow_datasets"))


@dataclasses.dataclass
class CellDataset:
  name: str
  path: str
  meta: dict

  @property
  def class_names(self) -> List[str]:
    return self.meta["class_names"]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_size(self) -> int:
    return int(self.meta["patch_size"])

  @property
  def splits(self) -> List[str]:
    return list(self.meta["splits"])

  def _split(self, split):
    if split not in self.meta["splits"]:
      raise ValueError(f"dataset {self.name!r} has no split {split!r}; it has {self.splits}")
    return self.meta["splits"][split]

  def labels(self, split) -> np.ndarray:
    return np.asarray(self._split(split)["labels"], np.int64)

  def specimens(self, split) -> np.ndarray:
    return np.asarray(self._split(split)["specimens"])

  def source(self, split):
    """Random-access source of example dicts (ArrayRecord through tfds.data_source)."""
    self._split(split)
    import tensorflow_datasets as tfds  # heavy; only when data is read
    builder = tfds.builder_from_directory(self.path)
    return builder.as_data_source(split=split)


def shared_specimens(dataset: CellDataset) -> dict:
  """specimen -> splits, for every specimen found in more than one split (data leakage)."""
  where = {}
  for split in dataset.splits:
    for s in set(dataset.specimens(split).tolist()):
      where.setdefault(s, []).append(split)
  return {s: sp for s, sp in where.items() if len(sp) > 1}


def refuse_shared_specimens(dataset: CellDataset, allow: bool):
  """Raises when a specimen has patches in more than one split, unless `allow` (the
  config.dataset.allow_shared_specimens override): its patches would leak into test."""
  leaks = shared_specimens(dataset)
  if leaks and not allow:
    shown = dict(list(leaks.items())[:5])
    raise ValueError(f"dataset {dataset.name!r} has {len(leaks)} specimen(s) in more than one "
                     f"split, e.g. {shown}: patches of one specimen would leak between train and "
                     "test. Rebuild it with a split by specimen, or set "
                     "config.dataset.allow_shared_specimens=True to accept the leak.")


def refuse_unusable_classes(dataset: CellDataset, train_split: str):
  """Raises when training on `train_split` cannot mean anything: fewer than two classes (the
  accuracy is 1 by construction), or a class without examples in that split (FlagLimit draws
  up to N per class, so it could not balance them). Datasets built before data_prep.build
  refused these get the same one-line error here."""
  names = dataset.class_names
  if len(names) < 2:
    raise ValueError(f"dataset {dataset.name!r} has {len(names)} class ({', '.join(names)}); a "
                     "classifier needs at least two: rebuild it with python -m data_prep.build "
                     "from patches of two or more classes (for --source=folder: one subfolder "
                     "ROOT/<class>/ per class)")
  counts = np.bincount(dataset.labels(train_split), minlength=len(names))
  missing = [n for n, c in zip(names, counts) if c == 0]
  if missing:
    raise ValueError(f"class {missing[0]!r} has no examples in split {train_split!r} of dataset "
                     f"{dataset.name!r} (classes without any: {missing}), so FlagLimit cannot "
                     "sample the classes evenly: rebuild the dataset with another --split_seed or "
                     "--split_fractions (data_prep.build prints the per-split class counts), or "
                     "set config.dataset.train_split to a split that has every class")


def synthetic_spec(config_dataset) -> synthetic_cells.SyntheticSpec:
  fields = {f.name for f in dataclasses.fields(synthetic_cells.SyntheticSpec)}
  given = dict(config_dataset.get("synthetic", {}) or {})
  unknown = set(given) - fields
  if unknown:
    raise ValueError(f"config.dataset.synthetic has unknown key(s) {sorted(unknown)}; "
                     f"valid: {sorted(fields)}")
  return synthetic_cells.SyntheticSpec(**given)


def open_configured(dataset_cfg, log=print) -> CellDataset:
  """The dataset config.dataset names (built on first use when it is synthetic)."""
  return open_dataset(dataset_cfg.name, dataset_cfg.data_dir,
                      synthetic=synthetic_spec(dataset_cfg), log=log)


def build_synthetic(data_dir: str, name: str, spec: synthetic_cells.SyntheticSpec,
                    workers: int = 0):
  """Renders and writes a synthetic_cells dataset; workers=0: one thread per core (up to 16)."""
  synthetic_cells.check(spec)
  recipe = recipe_for(name)
  workers = workers or min(os.cpu_count() or 1, 16)
  splits = {split: recipe.examples(spec, split, workers) for split in ("train", "val", "test")}
  return tfds_writer.write(
      data_dir, name, synthetic_cells.CLASS_NAMES, splits, patch_size=synthetic_cells.SIZE,
      description=recipe.__doc__,
      info={"source": "synthetic_cells", "spec": dataclasses.asdict(spec),
            "recipe_version": recipe.RECIPE_VERSION})


def check_available(name: str, data_dir: str = "") -> bool:
  """Raises unless `name` is on disk or can be built here; returns whether it is synthetic."""
  data_dir = resolve_data_dir(data_dir)
  if not name:
    raise ValueError("config.dataset.name is empty; use 'synthetic_cells' or a dataset built "
                     "with python -m data_prep.build")
  if os.path.isfile(os.path.join(data_dir, name)) or os.path.isfile(data_dir):
    raise ValueError(f"dataset path {os.path.join(data_dir, name)!r} is a file, "
                     "not a dataset folder")
  if name.startswith(SYNTHETIC) or tfds_writer.exists(data_dir, name):
    return name.startswith(SYNTHETIC)
  available = sorted(d for d in os.listdir(data_dir)
                     if tfds_writer.exists(data_dir, d)) if os.path.isdir(data_dir) else []
  raise ValueError(
      f"unknown dataset {name!r} in {data_dir}; available: {available or 'none'} "
      f"(plus '{SYNTHETIC}', built on first use). Build one with "
      f"python -m data_prep.build --source=folder --input=... --name={name}, or set "
      "config.dataset.data_dir / $CELLVIT_DATA to where it lives.")


def open_dataset(name: str, data_dir: str = "", *, synthetic=None, log=print) -> CellDataset:
  """Opens dataset `name`; builds it first if it is a synthetic_cells dataset not yet on disk."""
  data_dir = resolve_data_dir(data_dir)
  path = tfds_writer.dataset_dir(data_dir, name)
  is_synthetic = check_available(name, data_dir)
  if not tfds_writer.exists(data_dir, name):
    spec = synthetic or synthetic_cells.SyntheticSpec()
    log(f"Building {name} ({spec.num_specimens} specimens x {spec.cells_per_specimen} cells) "
        f"in {data_dir}; this happens once.")
    build_synthetic(data_dir, name, spec)
  with open(os.path.join(path, tfds_writer.META_FILE)) as f:
    meta = json.load(f)
  expected = recipe_for(name).RECIPE_VERSION
  if is_synthetic and meta["info"].get("recipe_version") != expected:
    raise ValueError(f"{name} in {data_dir} was rendered by another synthetic_cells recipe "
                     f"(version {meta['info'].get('recipe_version')}, expected "
                     f"{expected}); delete {os.path.join(data_dir, name)} to "
                     "rebuild it, or use another dataset name")
  if is_synthetic and synthetic is not None:
    built = meta["info"].get("spec")
    if built != dataclasses.asdict(synthetic):
      raise ValueError(f"{name} in {data_dir} was built with {built}, not the requested "
                       f"{dataclasses.asdict(synthetic)}; use another dataset name (e.g. "
                       f"{SYNTHETIC}_small) or delete {os.path.join(data_dir, name)}")
  return CellDataset(name=name, path=path, meta=meta)
