"""`configs/x.py[:arg]` -> that file's get_config(arg): the rule config_flags follows.

Kept apart from main.py, which defines absl flags at import: a module that imports main
while `python -m cellvit_jax.main` runs would define them a second time.
"""
import importlib.util


def load(spec: str):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_cellvit_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()
