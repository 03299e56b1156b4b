"""Shared fixtures: a tiny synthetic_cells dataset built once per test session, and input
fixtures in the published formats (the writers themselves are in tests/fixtures.py)."""
import os
import shutil
import sys
import tempfile

# XLA compilation is most of a tiny test's time, and many tests (and the runs they start as
# subprocesses, which inherit the environment) compile the same tiny programs: share them
# through JAX's persistent compilation cache, in a fresh folder per session so nothing
# outside it is read or written. Set before jax is imported; a caller's own setting wins.
# Only in the pytest process: a script a test starts imports this file for its helpers, and
# one whose test took the variable out (to test config.compile_cache_dir) must stay without.
_XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ and "pytest" in sys.modules:
  _XLA_CACHE = tempfile.mkdtemp(prefix="cellvit-test-xla-cache-")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _XLA_CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import pytest  # noqa: E402

import fixtures  # noqa: E402

from cellvit_jax.data import datasets, synthetic_cells  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
  if _XLA_CACHE:
    shutil.rmtree(_XLA_CACHE, ignore_errors=True)


# An easy variant (no non-specific staining) so a tiny model learns in seconds.
TINY_SPEC = dict(num_specimens=6, cells_per_specimen=128, seed=0, val_specimens=1, test_specimens=1,
                 nonspecific_fraction=0.0)


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("data"))
  datasets.open_dataset("synthetic_cells_tiny", data_dir,
                        synthetic=synthetic_cells.SyntheticSpec(**TINY_SPEC))
  return data_dir


# The tiny run that learns (about 60% test accuracy): 30 epochs of 16 steps.
TRAINED_RUN = {"train.epochs": 30.0, "train.log_every_steps": 16, "train.eval_every_epochs": 10.0}


@pytest.fixture(scope="session")
def tiny_trained_run(tiny_data_dir, tmp_path_factory):
  """Workdir of a finished tiny CustomViT run, trained once per session and shared."""
  from cellvit_jax.modes import train
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  results = train.train_and_evaluate(tiny_config(tiny_data_dir, **TRAINED_RUN), workdir)
  assert results["finished"]
  return workdir


def tiny_overrides(data_dir, **extra):
  """Command-line overrides for a fast run on the tiny dataset with a tiny CustomViT."""
  o = {
      "dataset.name": "synthetic_cells_tiny", "dataset.data_dir": data_dir,
      "dataset.flaglimit": 128,
      **{f"dataset.synthetic.{k}": v for k, v in TINY_SPEC.items()},
      "model.kwargs.dim": 32, "model.kwargs.depth": 2, "model.kwargs.num_heads": 2,
      "model.kwargs.patch_size": 8, "model.kwargs.drop_path": 0.0,
      "train.batch_size": 32, "train.eval_batch_size": 64, "train.epochs": 2.0,
      "train.log_every_steps": 4, "optim.lr": 3e-3, "optim.warmup_epochs": 0.5,
      "train.progress_bar": False,
      # The tests of what a finished run holds read its test metrics: the tiny runs are finals
      # (tests/test_sealed_test.py covers screening runs).
      "evaluate_test": True,
  }
  o.update(extra)
  return o


def apply_overrides(config, overrides):
  from cellvit_jax.config import files as config_files
  return config_files.set_dotted(config, overrides)


def tiny_config(data_dir, **extra):
  from cellvit_jax.config import defaults as config_defaults
  return apply_overrides(config_defaults.get_config(), tiny_overrides(data_dir, **extra))


def step_programs(model, mesh):
  """The tiny config, its optimiser, and `model`'s pure and jitted train steps (10 steps,
  2 of warm-up): what the step-runner tests feed."""
  from cellvit_jax.engine import optimizer, steps
  config = tiny_config("unused")
  tx, schedule = optimizer.make_optimizer(config.optim, model, 10, 2)
  pure = steps.make_train_step(model, schedule, config.optim, config.augment, config.normalize)
  jitted, _ = steps.make_steps(model, schedule, mesh, config.optim, config.augment,
                               config.normalize)
  return tx, pure, jitted


def study_config(config_file, run_dir, **fields):
  """configs/<config_file> (a study of a finished run: blur, robustness) pointed at `run_dir`,
  with `fields` set on its own section (the section is named as the file)."""
  from cellvit_jax.config import files as config_files
  config = config_files.load(os.path.join(REPO, "configs", config_file))
  section = config[os.path.splitext(config_file)[0]]
  section.run = run_dir
  for k, v in fields.items():
    section[k] = v
  return config


def as_flags(overrides):
  return [f"--config.{k}={v}" for k, v in overrides.items()]


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def folder_root(tmp_path):
  return fixtures.write_folder_root(tmp_path / "my cells ü")


@pytest.fixture
def patch_manifest(tmp_path):
  return fixtures.write_patch_manifest(tmp_path)


@pytest.fixture
def pannuke_root(tmp_path):
  return fixtures.write_pannuke_root(tmp_path / "PanNuke data")


@pytest.fixture
def lizard_root(tmp_path):
  return fixtures.write_lizard_root(tmp_path / "Lizard ü")
