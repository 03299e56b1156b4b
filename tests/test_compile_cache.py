"""The persistent compilation cache (cellvit_jax/compile_cache.py, config.compile_cache_dir)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from cellvit_jax import compile_cache
from conftest import REPO, tiny_overrides


def test_cache_dir_setting(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert compile_cache.cache_dir("auto") == os.path.join(str(tmp_path), "cellvit_jax", "jax_cache")
  assert compile_cache.cache_dir("off") == compile_cache.cache_dir(" ") == ""
  assert compile_cache.cache_dir("~/x") == os.path.join(os.path.expanduser("~"), "x")
  with pytest.raises(ValueError, match="config.compile_cache_dir=1 must be a folder"):
    compile_cache.cache_dir(1)


TWO_RUNS = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {tests!r})
    from cellvit_jax import main
    from conftest import apply_overrides
    from cellvit_jax.config import defaults
    cache, out = sys.argv[1], sys.argv[2]
    for run in ("first", "second"):
      config = apply_overrides(defaults.get_config(), json.loads(sys.argv[3]))
      config.compile_cache_dir = cache
      main.run(config, os.path.join(out, run))
      print("ENTRIES", run, len([f for _, _, fs in os.walk(cache) for f in fs]), flush=True)
""")


@pytest.mark.slow  # two runs in a fresh process: minutes on a loaded 2-core host
def test_second_identical_run_compiles_nothing_and_gives_the_same_metrics(tiny_data_dir,
                                                                          tmp_path):
  """Two identical runs through main.run in a fresh process: the first fills the folder, the
  second finds every program there (writes no new entry) and logs the same metrics."""
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # cache even the tiny programs
  cache = tmp_path / "cache"
  overrides = tiny_overrides(tiny_data_dir, **{"train.epochs": 1.0})
  script = TWO_RUNS.format(tests=os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, "-c", script, str(cache), str(tmp_path),
                         json.dumps(overrides)], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  entries = {line.split()[1]: int(line.split()[2]) for line in proc.stdout.splitlines()
             if line.startswith("ENTRIES")}
  assert entries["first"] > 0 and entries["second"] == entries["first"], entries
  records = []
  for run in ("first", "second"):
    with open(tmp_path / run / "metrics.jsonl") as f:
      records.append([{k: v for k, v in r.items() if k != "images_per_sec"}
                      for r in map(json.loads, f)])
    with open(tmp_path / run / "results.json") as f:
      assert json.load(f)["first_dispatch_seconds"] > 0
  assert records[0] == records[1]
