"""The run directory: creation, the config it belongs to, atomic JSON files.

A workdir holds one run. Rerunning with the same config resumes it; a different config
(other than the keys below, which do not change results) is refused rather than mixed
into the same checkpoints and metrics.
"""
import contextlib
import json
import os
import tempfile

import jax

# Keys that may change between a run and its resumption.
RESUMABLE_CHANGES = {"train.progress_bar", "train.log_every_steps", "dataset.workers",
                     "dataset.data_dir", "dataset.cache", "train.max_steps_per_run",
                     # the same batches and steps, held or dispatched differently (dispatch.py)
                     "dataset.on_device", "dataset.on_device_max_mb", "train.steps_per_dispatch",
                     # where the FM feature cache lives (entries are keyed by content)
                     "fm.cache_dir", "fm.feature_batch_size"}
# Keys added to the config after runs had been written, with the value their absence
# meant: a config.json without them resumes under a config holding these values.
ADDED_KEYS = {"augment.blur.prob": 0.0, "augment.blur.sigma_min": 0.0,
              "augment.blur.sigma_max": 1.5,
              "fm.preset": "", "fm.weights": "", "fm.num_heads": 0, "fm.input_size": 0,
              "fm.resize_method": "", "fm.feature": "", "fm.layer_decay": 0.75,
              "fm.probe_l2_grid": [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1], "fm.probe_max_steps": 300,
              "fm.feature_batch_size": 64, "fm.cache_dir": "",
              "dataset.on_device": "auto", "dataset.on_device_max_mb": 1024,
              "train.steps_per_dispatch": 1}


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def config_differences(old: dict, new: dict) -> list:
  a, b = _flatten(old), _flatten(json.loads(json.dumps(new)))
  a = {**{k: v for k, v in ADDED_KEYS.items() if k not in a}, **a}
  return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)


def results_record(config, dataset, counts, mesh, test: dict, val: dict, workdir: str,
                   **fields) -> dict:
  """The results.json every finished run writes (train, finetune, probe): the keys that the
  study, the report and results_table read, plus the mode's own `fields`."""
  return {
      "finished": True,
      "model": fields.pop("model", config.model.name),
      "dataset": dataset.name,
      "flaglimit": config.dataset.flaglimit,
      "seed": config.seed,
      "train_examples": int(sum(counts)),
      "train_counts": dict(zip(dataset.class_names, [int(c) for c in counts])),
      **fields,
      "devices": mesh.devices.size,
      "platform": jax.devices()[0].platform,
      "test": test,
      "val": val,
      "workdir": workdir,
      "config": config.to_dict(),
  }


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary file name beside `path` to write; on success it is renamed to `path`
  (mode 644), on any failure removed: a crash or an error never leaves half a file under the
  final name, and an existing file stays as it was until the new one is complete."""
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path) or ".")
  os.close(fd)
  try:
    yield tmp
    os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be shared
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text(path: str, text: str) -> str:
  """Writes `text` to `path` atomically (atomic_path)."""
  with atomic_path(path) as tmp:
    with open(tmp, "w", newline="") as f:
      f.write(text)
  return path


def write_json(workdir: str, name: str, obj) -> str:
  """Writes workdir/name as JSON atomically."""
  return write_text(os.path.join(workdir, name), json.dumps(obj, indent=2, default=str))


def prepare(workdir: str, config) -> str:
  """Creates the workdir (or checks it belongs to this config) and records config.json."""
  if not workdir:
    raise ValueError("--workdir is empty; pass a directory for checkpoints and results")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir!r} is a file, not a directory; pass a directory path")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise ValueError(f"cannot create --workdir {workdir!r}: {e.strerror}; pass another path") from None
  if not os.access(workdir, os.W_OK):
    raise PermissionError(f"--workdir {workdir!r} is not writable; pass another path")
  config_path = os.path.join(workdir, "config.json")
  has_run = any(os.path.exists(os.path.join(workdir, f)) for f in ("checkpoints", "results.json"))
  if os.path.exists(config_path) and has_run:
    with open(config_path) as f:
      old = json.load(f)
    diff = config_differences(old, config.to_dict())
    if diff:
      raise ValueError(f"--workdir {workdir!r} holds a run with a different config (keys differ: "
                       f"{', '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}); pass a new "
                       "--workdir, or the same config to resume it")
  elif jax.process_index() == 0:  # nothing trained here yet: (re)record the config
    write_json(workdir, "config.json", config.to_dict())
  return workdir
