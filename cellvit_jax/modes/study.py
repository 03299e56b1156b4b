"""mode=study: the paper's grid, models x FlagLimit x seeds, then blur robustness and cost.

    python -m cellvit_jax.main --config=configs/study.py --workdir=study
    python -m cellvit_jax.experiments.report --study_dir=study

Every cell (one row, FlagLimit, seed; see study_grid.py) trains in its own workdir with the
row's mode (train for the small models, probe / finetune for FMs), then runs the blur study
on that run; `cell.json`, written last and atomically, marks it finished.  Rerunning the
command skips finished cells and resumes an interrupted one from its latest checkpoint
(train_and_evaluate does that), so nothing finished is ever recomputed or overwritten.

Two ways to use several processes (config.study.parallel):
  "data"   (default) every process runs every cell, each cell trained data-parallel over
           all devices of all processes: one process per TPU VM worker, started with
           jax.distributed.  Process 0 writes; the others follow its view of which cells
           are done, so hosts never disagree about what to run.  The study directory must
           be one filesystem seen by every process (a bucket mounted at the same path).
  "cells"  independent processes (no jax.distributed), each running the cells
           i % n == k for its worker "k/n" (config.study.worker or $CELLVIT_WORKER), each
           on its own local devices.  The results store is plain files in disjoint cell
           folders, so studies run on several machines merge by copying folders together.

The cost of each row (parameters, XLA GFLOPs per image at the model's input size, images/s
on this device) is measured once, from the row's first finished run, into cost/<row>.json.
"""
import json
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from cellvit_jax import atomic_files, parallel
from cellvit_jax.engine import preemption
from cellvit_jax.experiments import cost
from cellvit_jax.modes import blur_study, finished_run, probe, robustness, study_grid, train
from cellvit_jax.runs import lock as workdir_lock

PARALLEL = ("data", "cells")


def _train_mode(config, workdir):
  train.train_and_evaluate(config, workdir)


DEFAULT_MODES = {"train": _train_mode}
# Each mode's own cheap config check (no data read, nothing written), run for every row up
# front; a mode without one is checked when its first cell starts.
CONFIG_CHECKS = {"train": train.check_config, "finetune": train.check_config,
                 "probe": probe.check_config}


def _read_json(path):
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    return None


def _plain(node):
  return node.to_dict() if hasattr(node, "to_dict") else dict(node)


def is_done(cell, study_dir) -> bool:
  return os.path.isfile(os.path.join(cell.workdir(study_dir), "cell.json"))


def process0_decides(flags):
  """Process 0's booleans on every process, so all hosts take the same branch (data mode)."""
  flags = np.asarray(flags, np.int32)
  if jax.process_count() == 1 or flags.size == 0:
    return flags.astype(bool)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.broadcast_one_to_all(flags)).astype(bool)


def blur_config(study, run_dir):
  """The mode=blur config (configs/blur.py's fields) for one trained cell."""
  b = study.blur
  return ml_collections.ConfigDict({"mode": "blur", "blur": {
      "run": run_dir, "sigmas": tuple(b.sigmas), "split": b.split, "batch_size": b.batch_size,
      "truncate": b.truncate, "boundary": b.boundary, "data_dir": ""}})


def check(config, modes) -> list:
  """Everything cheap before any cell runs: grid, worker, every row's config and mode."""
  study = config.study
  if study.parallel not in PARALLEL:
    raise ValueError(f"config.study.parallel={study.parallel!r}; use one of {PARALLEL}")
  worker = study_grid.parse_worker(study.worker or os.environ.get("CELLVIT_WORKER", ""))
  if study.parallel == "cells" and jax.process_count() > 1:
    raise ValueError("config.study.parallel='cells' runs independent processes, but "
                     f"jax.distributed joined {jax.process_count()} processes; use "
                     "parallel='data', or start the workers without JAX_COORDINATOR_ADDRESS / "
                     "CELLVIT_DISTRIBUTED")
  if study.parallel == "data" and worker is not None:
    raise ValueError(f"a worker ({study.worker or os.environ.get('CELLVIT_WORKER')!r}) is set but "
                     "config.study.parallel='data' trains every cell on all processes; pass "
                     "--config.study.parallel=cells to split cells between workers")
  blur_study.check_sigmas(study.blur.sigmas)
  if study.get("robustness") is not None and study.robustness.enabled:
    robustness.check_config(study.robustness)
  all_cells = study_grid.cells(study)
  seen = set()
  for cell in all_cells:
    if cell.row in seen:
      continue
    seen.add(cell.row)
    row_config = study_grid.cell_config(cell, study)
    mode = row_config.get("mode", "train")
    if mode not in modes:
      raise ValueError(f"study row {cell.row!r} ({cell.spec}) has mode {mode!r}, which this "
                       f"install does not provide (modes: {', '.join(sorted(modes))}); install "
                       f"the version that adds it, or leave the row out with "
                       f"--config.study.rows=<other rows>")
    if mode in CONFIG_CHECKS:  # model, FM weights, dataset, batch sizes: before hours of cells
      try:
        CONFIG_CHECKS[mode](row_config, parallel.make_mesh())
      except (ValueError, TypeError, OSError) as e:
        raise ValueError(f"study row {cell.row!r} ({cell.spec}): {' '.join(str(e).split())} "
                         f"(in a study, a row's setting is --config.study.models.{cell.row}.set."
                         "<key>=...)") from None
  return study_grid.cells_of_worker(all_cells, worker)


def measure_cost(run_dir, batch_sizes, min_seconds) -> dict:
  """A cost.py row for a trained run, whatever its family: its own resize and forward."""
  run = finished_run.load_run(run_dir)
  # A host copy of the replicated state, timed on this process's first device (under
  # jax.distributed the global arrays could not be mixed with local inputs).
  state = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array)
                       else x, run.state)

  row = {"model": run.config.model.name, "run": os.path.relpath(run.workdir),
         "params": int(sum(x.size for x in jax.tree.leaves(state.params))),
         "input_size": run.input_size, "dtype": run.config.model.dtype}
  row.update(cost.measure_forward(run.uint8_forward, state, batch_sizes=batch_sizes,
                                  native_size=run.native_size, min_seconds=min_seconds))
  return row


def run_cell(cell, config, study_dir, modes) -> bool:
  """Trains (or resumes) one cell, then its blur study; True when the cell is finished."""
  study = config.study
  workdir = cell.workdir(study_dir)
  cell_config = study_grid.cell_config(cell, study)
  mode = cell_config.get("mode", "train")
  logging.info("study cell %d: %s FlagLimit %d seed %d (%s, mode=%s) -> %s", cell.index, cell.row,
               cell.flaglimit, cell.seed, cell.spec, mode, workdir)
  t0 = time.perf_counter()
  modes[mode](cell_config, workdir)
  # Process 0 writes results.json; every process takes its word (they run in lockstep).
  results = _read_json(os.path.join(workdir, "results.json"))
  if not process0_decides([bool((results or {}).get("finished"))])[0]:
    logging.info("study cell %d stopped before the end of training; rerun to continue.", cell.index)
    return False
  t1 = time.perf_counter()
  blur_dir = os.path.join(workdir, "blur")
  if not process0_decides([os.path.isfile(os.path.join(blur_dir, "blur.json"))])[0]:
    blur_study.run_mode(blur_config(study, workdir), blur_dir)
  suite_dir = os.path.join(workdir, "robustness")
  if (study.get("robustness") is not None and study.robustness.enabled and not
      process0_decides([os.path.isfile(os.path.join(suite_dir, "robustness.json"))])[0]):
    section = robustness.get_config_section(workdir)
    section.update({k: v for k, v in study.robustness.items() if k != "enabled"})
    section.run = workdir
    robustness.run_mode(ml_collections.ConfigDict({"mode": "robustness", "robustness": section}),
                        suite_dir)
  t2 = time.perf_counter()
  if jax.process_index() == 0:
    atomic_files.write_json(workdir, "cell.json", {
        "index": cell.index, "row": cell.row, "config": cell.spec, "mode": mode,
        "flaglimit": cell.flaglimit, "seed": cell.seed, "results": "results.json",
        "blur": "blur/blur.json", "seconds_this_invocation": {"train": t1 - t0, "blur": t2 - t1},
        "host": os.uname().nodename, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                  time.gmtime())})
  return True


def ensure_cost(row, study_dir, study):
  """cost/<row>.json from the row's first finished cell, if not there yet."""
  path = os.path.join(study_dir, "cost", f"{row}.json")
  row_cells = [c for c in study_grid.cells(study) if c.row == row]
  flags = process0_decides([os.path.isfile(path)] + [is_done(c, study_dir) for c in row_cells])
  done = [c for c, d in zip(row_cells, flags[1:]) if d]
  if flags[0] or not done:
    return
  c = study.cost
  entry = measure_cost(done[0].workdir(study_dir), [int(b) for b in c.batch_sizes], c.min_seconds)
  entry["row"] = row
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_files.write_json(os.path.dirname(path), f"{row}.json", entry)
    logging.info("cost of %s: %s parameters, %.4f GFLOPs/image, images/s %s", row,
                 f"{entry['params']:,}", entry["gflops_per_image"], entry["images_per_sec"])


def lock_name(study) -> str:
  """The study directory's lock file: one per worker with parallel='cells' (the workers share
  the directory; each cell's workdir has its own lock too), one for the study otherwise."""
  worker = study_grid.parse_worker(study.worker or os.environ.get("CELLVIT_WORKER", ""))
  if study.parallel == "cells" and worker is not None:
    return f"{workdir_lock.LOCK_FILE}-worker{worker[0]}of{worker[1]}"
  return workdir_lock.LOCK_FILE


@workdir_lock.releases_own_locks
def run_mode(config, workdir: str = "", modes=None) -> dict:
  """Runs this process's share of the study in `workdir` (default study/); returns a summary.

  `modes` maps config.mode -> fn(config, workdir) (main.MODES); default: train only.
  """
  modes = dict(modes or DEFAULT_MODES)
  my_cells = check(config, modes)
  study = config.study
  study_dir = os.path.abspath(workdir or "study")
  os.makedirs(study_dir, exist_ok=True)
  workdir_lock.acquire_shared(study_dir, lock_name(study))  # a second copy of this worker stops
  if jax.process_index() == 0:
    atomic_files.write_json(study_dir, "study.json", {
        "config": config.to_dict(),
        "rows": [{"row": n, "config": r["config"], "set": _plain(r["set"])}
                 for n, r in study_grid.rows(study)],
        "flaglimits": list(study_grid.check_flaglimits(study.flaglimits)),
        "seeds": [int(s) for s in study.seeds]})
  done = process0_decides([is_done(c, study_dir) for c in my_cells])
  summary = {"study_dir": study_dir, "cells": len(my_cells), "skipped": [], "finished": [],
             "unfinished": []}
  with preemption.PreemptionWatch() as watch:
    for cell, finished in zip(my_cells, done):
      if finished:
        summary["skipped"].append(cell.index)
        continue
      if study.max_cells and (len(summary["finished"]) + len(summary["unfinished"])
                              >= study.max_cells):
        break
      ok = run_cell(cell, config, study_dir, modes)
      summary["finished" if ok else "unfinished"].append(cell.index)
      if ok and study.cost.enabled:
        ensure_cost(cell.row, study_dir, study)
      # A preempted VM or a batch queue's SIGTERM: stop here rather than start the next cell
      # (the cell's training saved at its next step and returned).
      if process0_decides([watch.requested])[0]:
        logging.info("SIGTERM: the study stops after cell %d; rerun the same command to "
                     "continue.", cell.index)
        summary["stopped_by_sigterm"] = True
        break
  left = len(my_cells) - len(summary["skipped"]) - len(summary["finished"])
  summary["remaining"] = left
  if jax.process_index() == 0:
    print(f"\nstudy {study_dir}: {len(summary['finished'])} cell(s) finished now, "
          f"{len(summary['skipped'])} already finished, {left} left of {len(my_cells)}"
          + (" (this worker's share)" if len(my_cells) < len(study_grid.cells(study)) else "")
          + (". Rerun the same command to continue." if left else
             f". Report: python -m cellvit_jax.experiments.report --study_dir={study_dir}"))
  return summary
