"""The five newer presets (uni2, virchow2, hoptimus0, gigapath, phikon2) end to end on tiny
random checkpoints of their published layouts: mode=probe through the command line, and
mode=finetune through main.run starting from the checkpoint's weights."""
import json
import os

import jax
import numpy as np
import pytest

from cellvit_jax import main
from cellvit_jax.models.fm import foundation
from cellvit_jax.models.fm import presets as fm_presets
from cellvit_jax.models.fm import tiny as fm_tiny
from cellvit_jax.modes import finished_run
from test_foundation_modes import _main, fm_config, fm_overrides
from conftest import as_flags

NEW = ("uni2", "virchow2", "hoptimus0", "gigapath", "phikon2")
# The default suite runs one register-token layout (virchow2: registers with positions,
# SwiGLU, cls_mean) and one transformers layout (phikon2) both ways; the rest are `slow`
# (each differs from those only in the converter's layout, covered by the parity tests).
_FAST_PROBE, _FAST_FINETUNE = ("virchow2", "phikon2"), ("virchow2",)
PROBE = [p if p in _FAST_PROBE else pytest.param(p, marks=pytest.mark.slow) for p in NEW]
FINETUNE = [p if p in _FAST_FINETUNE else pytest.param(p, marks=pytest.mark.slow) for p in NEW]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  base = tmp_path_factory.mktemp("fm_new")
  return {p: fm_tiny.write_tiny(p, str(base / p)) for p in NEW}


@pytest.mark.parametrize("preset", PROBE)
def test_probe_through_the_command_line(preset, weights, tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  out = _main(["cellvit_jax.main", f"--config=configs/fm.py:{preset},probe", f"--workdir={workdir}",
               *as_flags(fm_overrides(tiny_data_dir, weights[preset], str(tmp_path / "cache")))])
  assert out.returncode == 0, out.stderr[-2000:]
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["finished"] and results["mode"] == "probe" and results["model"] == preset
  # Virchow2's card feature is class token + mean patch token: twice the width.
  width = 64 if fm_presets.get(preset).feature == "cls_mean" else 32
  assert results["feature_dim"] == width
  assert 0.0 <= results["test"]["accuracy"] <= 1.0
  run = finished_run.load_run(workdir)
  assert run.input_size == (224 if preset == "phikon2" else 32)  # phikon2 runs the published 224


@pytest.mark.parametrize("preset", FINETUNE)
def test_finetune_starts_from_the_checkpoint(preset, weights, tiny_data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  config = fm_config(f"{preset},finetune", tiny_data_dir, weights[preset], "",
                     **{"train.batch_size": 32, "train.eval_batch_size": 64, "train.epochs": 0.5})
  main.run(config, workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["finished"] and results["step"] == 2 and results["config"]["mode"] == "finetune"
  run = finished_run.load_run(workdir)
  published = foundation.pretrained_backbone(config.fm, run.model)
  diff = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                      run.state.params["backbone"], published)
  assert 0 < max(jax.tree.leaves(diff)) < 0.02  # moved from the published weights, a little


def test_gated_presets_are_the_ones_the_docs_give_a_token_step():
  """docs/foundation_models.md lists the hub commands under '# public' and '# gated'; each
  preset's `gated` field must say the same, so neither drifts from the other."""
  with open(os.path.join(os.path.dirname(__file__), "..", "docs", "foundation_models.md")) as f:
    lines = f.read().splitlines()
  start = next(i for i, line in enumerate(lines) if line.strip().startswith("# public"))
  section, listed = None, {}
  for line in lines[start:]:
    stripped = line.strip()
    if stripped.startswith("# public"):
      section = False
    elif stripped.startswith("# gated"):
      section = True
    elif "--config=configs/fm.py:" in stripped:
      listed[stripped.split("fm.py:")[1].split(",")[0]] = section
    elif stripped and not line.startswith("    "):  # the end of the indented code block
      break
  assert set(listed) == set(fm_presets.names())
  assert listed == {name: fm_presets.get(name).gated for name in fm_presets.names()}
