"""Why a write failed, said so that a user can act: a full disk, a quota, a file-size limit, a
read-only or unwritable directory, or (when none of these) another writer or a failing
filesystem. Checkpoints and the feature cache add it to their one-line errors."""
import errno
import os
import shutil


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
