"""The run directory: creation, the config it belongs to, atomic JSON files.

A workdir holds one run. Rerunning with the same config resumes it; a different config
(other than the keys below, which do not change results) is refused rather than mixed
into the same checkpoints and metrics.
"""
import contextlib
import errno
import json
import os
import shutil
import tempfile

import jax
from flax import traverse_util

from cellvit_jax.runs import stored_config
from cellvit_jax.runs import lock as workdir_lock

# Keys that may change between a run and its resumption.
RESUMABLE_CHANGES = {"train.progress_bar", "train.log_every_steps", "dataset.workers",
                     "dataset.data_dir", "dataset.cache", "train.max_steps_per_run",
                     # the same batches and steps, held or dispatched differently
                     # (data/on_device.py, engine/multistep.py)
                     "dataset.on_device", "dataset.on_device_max_mb", "train.steps_per_dispatch",
                     # how CustomViT's stem convs are computed, not what (models/conv_forms.py)
                     "model.kwargs.stem_impl",
                     # where the FM feature cache lives (entries are keyed by content)
                     "fm.cache_dir", "fm.feature_batch_size"}

# Below this much free space a failed write is put down to a full disk.
LOW_SPACE_BYTES = 64 << 20


def _error_chain(error) -> list:
  """`error` and every exception it was raised from or during (and exception groups' members)."""
  seen, out, todo = set(), [], [error]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    out.append(e)
    todo += [e.__cause__, e.__context__, *getattr(e, "exceptions", ())]
  return out


def free_bytes(path: str):
  """Free space of the filesystem holding `path` (or its nearest existing parent); None if
  unknown."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


def write_failure_hint(error, directory: str, elsewhere: str = "pass another --workdir") -> str:
  """Why a write into `directory` failed and what to do: from the errno in the exception
  chain (or the text of libraries that drop it, such as tensorstore) and the free space.
  It says the disk is full only when it is."""
  chain = _error_chain(error)
  codes = {e.errno for e in chain if isinstance(e, OSError) and e.errno}
  text = " ".join(str(e) for e in chain).lower()
  free = free_bytes(directory)
  if errno.ENOSPC in codes or "no space left" in text or (free is not None and
                                                          free < LOW_SPACE_BYTES):
    return f"the disk is full: free disk space or {elsewhere}"
  if errno.EDQUOT in codes or "quota exceeded" in text:
    return f"the disk quota is exceeded: free space within your quota or {elsewhere}"
  if errno.EFBIG in codes or "file too large" in text:
    return "a file reached the file-size limit of this process (ulimit -f): raise the limit"
  if errno.EROFS in codes or "read-only file system" in text:
    return f"the filesystem is read-only: {elsewhere}"
  if codes & {errno.EACCES, errno.EPERM} or "permission denied" in text:
    return f"no permission to write there: fix the permissions or {elsewhere}"
  shown = f"{free / 2**30:.1f} GiB free" if free is not None else "free space unknown"
  return (f"the disk is not full ({shown}): files changed under the writer, as when another "
          "process writes the same directory, or the filesystem failed; make sure no other run "
          "uses it")


def config_differences(old: dict, new: dict) -> list:
  # Both configs as JSON stores them (tuples as lists), flattened to 'a.b' keys.
  # Both with the keys a config may lack filled in (stored_config): the stored one predates
  # them; a new one may leave a model switch to its default (model.kwargs).
  a, b = (traverse_util.flatten_dict(json.loads(json.dumps(stored_config.upgrade(c))), sep=".")
          for c in (old, new))
  return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RESUMABLE_CHANGES)


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
  """Creates the workdir (or checks it belongs to this config), takes its lock (one run per
  workdir: workdir_lock; held until the process ends or the caller decorated with
  workdir_lock.releases_own_locks returns) and records config.json."""
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
    diff = config_differences(old, config.to_dict())
    if diff:
      raise ValueError(f"--workdir {workdir!r} holds a run with a different config (keys differ: "
                       f"{', '.join(diff[:8])}{' ...' if len(diff) > 8 else ''}); pass a new "
                       "--workdir, or the same config to resume it")
  elif jax.process_index() == 0:  # nothing trained here yet: (re)record the config
    write_json(workdir, "config.json", config.to_dict())
  return workdir
