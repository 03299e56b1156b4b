"""`configs/x.py[:arg]` -> that file's get_config(arg): the rule config_flags follows.

The one config-file loader of the tree: main's override checks, study rows, cost, the
benchmarks, the tests and configs that derive from other configs all load through it.  A
relative path is read from the working directory, or from `base_dir` when given (a config
deriving from a sibling passes its own directory); never from where the package is
installed.

Kept apart from main.py, which defines absl flags at import: a module that imports main
while `python -m cellvit_jax.main` runs would define them a second time.
"""
import importlib.util
import os


def resolve(spec: str, base_dir: str = "") -> str:
  """The file a spec names: absolute, or relative to `base_dir` (default: the working directory)."""
  path = spec.partition(":")[0]
  if base_dir and not os.path.isabs(path):
    path = os.path.join(base_dir, path)
  return path


def load(spec: str, base_dir: str = ""):
  """`path.py[:arg]` -> the file's get_config(arg) (get_config() without an arg)."""
  path, arg = resolve(spec, base_dir), spec.partition(":")[2]
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} not found (looked at {os.path.abspath(path)}); "
                            "give a configs/*.py path relative to the working directory, or an "
                            "absolute one")
  name = "_cellvit_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def set_dotted(config, overrides: dict):
  """Sets each `{"section.field": value}` of `overrides` on `config` (the `--config.x=y` form
  of main, for code that builds configs: benchmarks, tests, notebooks); returns `config`."""
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config
