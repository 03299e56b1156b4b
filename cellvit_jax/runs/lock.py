"""One run per workdir: an exclusive lock on `<workdir>/.lock` for the run's lifetime.

Two processes training into one workdir overwrite each other's checkpoints. A run takes
fcntl.flock on the lock file, which the OS drops when the process ends however it ends
(exit, SIGTERM, SIGKILL, a crash), and writes its pid, host and start time into it, so a
second process stops at once saying who holds the workdir. The file is never deleted (a
process that opened the old file would then lock another inode than one that creates a new
file): a released lock is an empty file.

Stale locks: a lock file naming a process of this host whose flock is free was left by a
dead process and is taken over, with a log line. A lock naming another host cannot be
checked from here (flock need not reach across hosts on a shared filesystem), so its holder
touches the file every HEARTBEAT_S seconds, and a lock of another host counts as stale only
when untouched for STALE_AFTER_S.

Under jax.distributed every process shares one workdir: process 0 takes the lock and the
others follow its outcome (acquire_shared).
"""
import atexit
import errno
import fcntl
import functools
import json
import os
import socket
import threading
import time

import jax
import numpy as np
from absl import logging

LOCK_FILE = ".lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0

_held = {}                   # realpath of a lock file this process holds -> its open fd
_registry = threading.Lock()  # guards _held against the heartbeat thread
_heartbeat = []              # the heartbeat thread, once started


class WorkdirLocked(OSError):
  """Another run holds the workdir; the message names its pid and host."""


def _read(fd) -> dict:
  try:
    data = os.pread(fd, 4096, 0)
    holder = json.loads(data) if data.strip() else {}
  except (OSError, ValueError):
    return {}
  return holder if isinstance(holder, dict) else {}


def _flock(fd):
  """True: this process holds it now; False: another does; None: no flock on this filesystem."""
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return True
  except OSError as e:
    if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
      return False
    if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
      return None
    raise


def _pid_alive(pid) -> bool:
  try:
    os.kill(int(pid), 0)
  except (ProcessLookupError, TypeError, ValueError, OverflowError):
    return False
  except PermissionError:  # alive, another user's
    return True
  return True


def _holder_text(holder: dict) -> str:
  if not holder.get("pid"):
    return "another process (it has not written its pid yet)"
  return f"pid {holder['pid']} on host {holder.get('host')} (started {holder.get('started')})"


def _verdict(holder: dict, fd, flock_works: bool):
  """(True, why) when a lock file's previous holder is gone; (False, why) when it may run."""
  if not holder.get("pid"):
    return True, ""
  if holder.get("host") == socket.gethostname():
    if flock_works or not _pid_alive(holder["pid"]) or str(holder["pid"]) == str(os.getpid()):
      return True, "that process is no longer running"
    return False, ""
  age = time.time() - os.fstat(fd).st_mtime
  if age > STALE_AFTER_S:
    return True, f"no heartbeat for {age / 60:.0f} min"
  return False, (f" (its last heartbeat was {age:.0f} s ago; if that run is gone, the lock "
                 f"expires {STALE_AFTER_S / 60:.0f} min after it)")


def acquire(workdir: str, name: str = LOCK_FILE) -> str:
  """Takes the lock of `workdir` (an existing directory) or raises WorkdirLocked naming the
  holder; a no-op when this process holds it already. Returns the lock file's path."""
  path = os.path.join(workdir, name)
  key = os.path.realpath(path)
  with _registry:
    if key in _held:
      return path
  fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
  try:
    locked = _flock(fd)
    holder = _read(fd)
    for _ in range(20):  # a holder writes its pid right after taking the lock
      if locked is not False or holder.get("pid"):
        break
      time.sleep(0.05)
      holder = _read(fd)
    stale, why = (False, "") if locked is False else _verdict(holder, fd, locked is True)
    if not stale:
      raise WorkdirLocked(f"workdir {workdir} is in use by another run: {_holder_text(holder)}"
                          f"{why}; wait for it to end, or pass another --workdir")
    if why:
      logging.warning("%s: taking over the lock of pid %s on %s (started %s): %s.", workdir,
                      holder.get("pid"), holder.get("host"), holder.get("started"), why)
    if locked is None:
      logging.warning("%s: this filesystem has no flock; the lock relies on the pid and host "
                      "written in %s.", workdir, path)
    record = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    _flush(fd)
  except BaseException:
    os.close(fd)  # drops the flock if it was taken
    raise
  with _registry:
    _held[key] = fd
    if not _heartbeat:
      _heartbeat.append(threading.Thread(target=_beat, name="workdir-lock-heartbeat", daemon=True))
      _heartbeat[0].start()
  return path


def _flush(fd):
  """fsync: on a bucket mount (gcsfuse) other hosts see the file only once it is uploaded."""
  try:
    os.fsync(fd)
  except OSError:
    pass


def _beat():
  while True:
    time.sleep(HEARTBEAT_S)
    with _registry:
      for fd in _held.values():
        try:
          os.utime(fd)
        except OSError:  # a vanished workdir: nothing to keep alive
          pass


def release(path: str):
  """Empties and unlocks a lock file this process holds (acquire's return value)."""
  with _registry:
    fd = _held.pop(os.path.realpath(path), None)
  if fd is None:
    return
  try:
    os.ftruncate(fd, 0)
    _flush(fd)
    # LOCK_UN before close: a forked child sharing the descriptor would otherwise keep it.
    fcntl.flock(fd, fcntl.LOCK_UN)
  except OSError:
    pass
  finally:
    os.close(fd)


def held() -> list:
  """Paths of the lock files this process holds."""
  with _registry:
    return sorted(_held)


atexit.register(lambda: [release(p) for p in held()])


def releases_own_locks(fn):
  """Decorator: locks the call takes are released when it returns or raises (locks held
  before it stay held), so in-process runs one after another (a study's cells, tests) hold
  only their current workdir."""
  @functools.wraps(fn)
  def wrapper(*args, **kwargs):
    before = set(held())
    try:
      return fn(*args, **kwargs)
    finally:
      for path in set(held()) - before:
        release(path)
  return wrapper


def acquire_shared(workdir: str, name: str = LOCK_FILE):
  """acquire() for a workdir all processes of a jax.distributed run share: process 0 holds
  the lock, and every process raises when process 0 could not take it."""
  error = None
  if jax.process_index() == 0:
    try:
      acquire(workdir, name)
    except Exception as e:  # any failure: the others must not wait for a lock never taken
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    ok = bool(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
    if not ok and error is None:
      raise WorkdirLocked(f"workdir {workdir} could not be locked by process 0 of this job (its "
                          "error names the reason, e.g. the run that holds it)")
  if error is not None:
    raise error
