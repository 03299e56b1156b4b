"""Files written whole or not at all: a temporary file beside the target, renamed over it on
success. A crash or an error never leaves half a file under the final name, and an existing
file stays as it was until the new one is complete."""
import contextlib
import json
import os
import tempfile


@contextlib.contextmanager
def atomic_path(path: str):
  """Yields a temporary file name beside `path` to write; on success it is renamed to `path`
  (mode 644), on any failure removed."""
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
