"""The study grid: rows (model configs) x FlagLimits x seeds -> cells, their configs and paths.

A row is a named config spec (`configs/resnet18.py`, `configs/fm.py:uni,probe`) with
optional overrides; a cell is one (row, FlagLimit, seed) and owns one workdir:

    <study_dir>/runs/<row>/fl<FlagLimit>/seed<seed>/          results.json, checkpoints/ ...
    <study_dir>/runs/<row>/fl<FlagLimit>/seed<seed>/blur/     blur.json, blur.png

Cells are numbered in the order they run: FlagLimit ascending (outermost), then seed, then
row, so a study stopped half-way has every model at the small scales rather than a few
models at every scale.  Worker k of n runs the cells whose index i has i % n == k.
Everything here is pure: no training, no files written.
"""
import dataclasses
import os
import re
from typing import Optional

from cellvit_jax.config import files as config_files

ROW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclasses.dataclass(frozen=True)
class Cell:
  index: int
  row: str
  spec: str
  flaglimit: int
  seed: int

  def workdir(self, study_dir: str) -> str:
    return os.path.join(study_dir, "runs", self.row, f"fl{self.flaglimit}", f"seed{self.seed}")


def apply_nested(config, overrides, where: str = "config"):
  """Sets every leaf of the nested dict/ConfigDict `overrides` on `config`; unknown keys raise."""
  for key, value in overrides.items():
    if key not in config:
      raise ValueError(f"study override {where}.{key}: {where} has no field {key!r}; valid "
                       f"fields: {', '.join(sorted(config.keys()))}")
    if hasattr(value, "items"):
      apply_nested(config[key], value, f"{where}.{key}")
    else:
      config[key] = tuple(value) if isinstance(value, list) else value
  return config


def check_flaglimits(values) -> tuple:
  """Powers of two >= 1, strictly increasing (the report's log2 axis and nested subsets)."""
  out = []
  for v in values:
    if int(v) != v or v < 1 or int(v) & (int(v) - 1):
      raise ValueError(f"config.study.flaglimits must be powers of two (256, 512, ...); got {v!r} "
                       f"in {tuple(values)}")
    out.append(int(v))
  if not out or out != sorted(set(out)):
    raise ValueError(f"config.study.flaglimits must be non-empty, increasing and unique; got "
                     f"{tuple(values)}")
  return tuple(out)


def rows(study) -> list[tuple[str, dict]]:
  """[(row name, {'config': spec, 'set': overrides})] by name, filtered by study.rows.

  By name because ConfigDict keeps its keys sorted (and copies lose any other order), so
  the order is the same in every process and every invocation.
  """
  all_rows = []
  for name, row in study.models.items():
    if not ROW_NAME.match(name):
      raise ValueError(f"config.study.models has a row named {name!r}; row names become folder "
                       "names: use letters, digits, '_', '-', '.'")
    if "config" not in row or not row["config"]:
      raise ValueError(f"config.study.models.{name} has no 'config' (a configs/*.py spec)")
    all_rows.append((name, {"config": row["config"], "set": row.get("set", {}) or {}}))
  wanted = [r.strip() for r in study.rows.split(",") if r.strip()] if study.rows else []
  known = [n for n, _ in all_rows]
  unknown = [r for r in wanted if r not in known]
  if unknown:
    raise ValueError(f"config.study.rows names {unknown}, not rows of config.study.models "
                     f"({', '.join(known)})")
  if wanted:
    all_rows = [r for r in all_rows if r[0] in wanted]
  if not all_rows:
    raise ValueError("the study has no rows; config.study.models is empty")
  return all_rows


def cells(study) -> list[Cell]:
  """Every cell of the grid, in run order."""
  row_list = rows(study)
  seeds = [int(s) for s in study.seeds]
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f"config.study.seeds must be non-empty and unique, got {tuple(study.seeds)}")
  out = []
  for fl in check_flaglimits(study.flaglimits):
    for seed in seeds:
      for name, row in row_list:
        out.append(Cell(len(out), name, row["config"], fl, seed))
  return out


def cell_config(cell: Cell, study):
  """The full config of one cell: the row's config file, the study-wide then the row's
  overrides, then the cell's FlagLimit and seed and whether it reads test (study.screening:
  a screening study's cells never do; a final study's always do), which always win.

  The row's `configs/x.py[:arg]` is read from the working directory (or is absolute), like
  main's --config."""
  try:
    config = config_files.load(cell.spec)
  except FileNotFoundError:
    path = cell.spec.partition(":")[0]
    raise ValueError(f"study row {cell.row!r}: config file {path!r} (from {cell.spec!r}) not "
                     f"found, looked at {os.path.abspath(path)}; row config paths are read from "
                     "the working directory: run from the checkout that holds configs/, or "
                     f"give an absolute path with --config.study.models.{cell.row}.config=..."
                     ) from None
  row = dict(rows(study))[cell.row]
  apply_nested(config, study.set, "config")
  apply_nested(config, row["set"], "config")
  config.dataset.flaglimit = cell.flaglimit
  config.seed = cell.seed
  config.evaluate_test = not check_screening(study)
  return config


def check_screening(study) -> bool:
  """config.study.screening as a bool (absent in studies written before it: a final study)."""
  value = study.get("screening", False)
  if not isinstance(value, bool):
    raise ValueError(f"config.study.screening={value!r} must be True (a screening study: val "
                     "only, test sealed) or False (final rows, test read once); pass "
                     "--config.study.screening=true or false")
  return value


def parse_worker(text: str) -> Optional[tuple[int, int]]:
  """'k/n' -> (k, n), None for ''. Worker k of n runs cells i with i % n == k."""
  if not text:
    return None
  m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
  if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
    raise ValueError(f"worker {text!r} must read 'k/n' with 0 <= k < n (this process runs cells "
                     "i with i % n == k), e.g. CELLVIT_WORKER=0/4")
  return int(m.group(1)), int(m.group(2))


def cells_of_worker(all_cells: list[Cell], worker: Optional[tuple[int, int]]) -> list[Cell]:
  """The cells worker (k, n) runs: index % n == k; all of them when worker is None."""
  if worker is None:
    return list(all_cells)
  k, n = worker
  return [c for c in all_cells if c.index % n == k]
