"""JAX's persistent compilation cache, on by default (config.compile_cache_dir).

A second seed, a resumed run or the next cell of a study loads the programs an earlier run
compiled instead of compiling them again (on a GPU, state creation, the train and eval steps
and XLA's autotuning take tens of seconds for the larger CNNs). The entries are keyed by the
program, the backend and the jax version, so a stale entry is never used.
"""
import os

import jax

_OFF = {"", "off", "none", "false"}


def cache_dir(setting) -> str:
  """config.compile_cache_dir -> the folder to use, "" when off. "auto": the user cache dir
  ($XDG_CACHE_HOME, else ~/.cache)/cellvit_jax/jax_cache."""
  if not isinstance(setting, str):
    raise ValueError(f"config.compile_cache_dir={setting!r} must be a folder, 'auto' (the user "
                     "cache dir) or 'off'")
  key = setting.strip()
  if key.lower() in _OFF:
    return ""
  if key.lower() == "auto":
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cellvit_jax", "jax_cache")
  return os.path.abspath(os.path.expanduser(key))


def enable(setting) -> str:
  """Points JAX at the cache folder, once, at a mode's entry; returns the folder in use ("" when
  off). A JAX_COMPILATION_CACHE_DIR in the environment is the caller's own choice and wins."""
  path = cache_dir(setting)
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  if not path:
    return ""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise ValueError(f"config.compile_cache_dir={setting!r}: cannot create {path} ({e}); pass "
                     "a writable folder or --config.compile_cache_dir=off") from e
  jax.config.update("jax_compilation_cache_dir", path)
  return path
