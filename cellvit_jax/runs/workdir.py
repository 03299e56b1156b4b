"""The run directory: creation, its lock, and the config it belongs to.

A workdir holds one run. Rerunning with the same config resumes it; a different config
(other than the keys below, which do not change results) is refused rather than mixed
into the same checkpoints and metrics.
"""
import json
import os

import jax
from flax import traverse_util

from cellvit_jax import atomic_files
from cellvit_jax.runs import stored_config
from cellvit_jax.runs import lock as workdir_lock

# Keys that may change between a run and its resumption.
RESUMABLE_CHANGES = {"train.progress_bar", "train.log_every_steps", "dataset.workers",
                     "dataset.data_dir", "dataset.cache", "train.max_steps_per_run",
                     # the same batches and steps, held or dispatched differently
                     # (data/on_device.py, engine/multistep.py)
                     "dataset.on_device", "dataset.on_device_max_mb", "train.steps_per_dispatch",
                     # how CustomViT's stem convs are computed, not what (models/conv_impl.py)
                     "model.kwargs.stem_impl",
                     # where the FM feature cache lives (entries are keyed by content)
                     "fm.cache_dir", "fm.feature_batch_size",
                     # where compiled programs are cached (compile_cache.py)
                     "compile_cache_dir"}

def config_differences(old: dict, new: dict) -> list:
  # Both configs as JSON stores them (tuples as lists), flattened to 'a.b' keys.
  # Both with the keys a config may lack filled in (stored_config): the stored one predates
  # them; a new one may leave a model switch to its default (model.kwargs).
  a, b = (traverse_util.flatten_dict(json.loads(json.dumps(stored_config.upgrade(c))), sep=".")
          for c in (old, new))
  return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)


def prepare(workdir: str, config_dict: dict) -> str:
  """Creates the workdir (or checks it belongs to this config, `config_dict` as config.json
  holds it), takes its lock (one run per workdir: workdir_lock; held until the process ends
  or the caller decorated with workdir_lock.releases_own_locks returns) and records
  config.json."""
  if not workdir:
    raise ValueError("--workdir is empty; pass a directory for checkpoints and results")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir!r} is a file, not a directory; pass a directory path")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create --workdir {workdir!r}: {e.strerror}; "
                     "pass another path") from None
  if not os.access(workdir, os.W_OK):
    raise PermissionError(f"--workdir {workdir!r} is not writable; pass another path")
  workdir_lock.acquire_shared(workdir)  # before anything in it is read or written
  config_path = os.path.join(workdir, "config.json")
  has_run = any(os.path.exists(os.path.join(workdir, f)) for f in ("checkpoints", "results.json"))
  if os.path.exists(config_path) and has_run:
    with open(config_path) as f:
      old = json.load(f)
    diff = config_differences(old, config_dict)
    if diff:
      raise ValueError(f"--workdir {workdir!r} holds a run with a different config (keys differ: "
                       f"{', '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}); pass a new "
                       "--workdir, or the same config to resume it")
  elif jax.process_index() == 0:  # nothing trained here yet: (re)record the config
    atomic_files.write_json(workdir, "config.json", config_dict)
  return workdir
