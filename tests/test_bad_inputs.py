"""The bad-input catalogue: every case ends in a clear message naming the input and the fix,
and leaves what already exists (workdirs, datasets) exactly as it was.

Command-line cases run the real entry point (one `error: ...` line, exit 2, no traceback);
the others call the library. More data_prep cases live in test_build.py and test_sources.py;
the weights cases (another FM family, a truncated safetensors file, another hidden size, an
input size that is no multiple of the patch, missing files, a corrupt feature cache) in
test_foundation_inputs.py.
"""
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys

import pytest

from cellvit_jax.config import defaults as config_defaults
from cellvit_jax.data import datasets, synthetic_cells, tfds_writer
from cellvit_jax.modes import train
from conftest import REPO, TINY_SPEC, as_flags, tiny_config, tiny_overrides


def _tree_digest(path):
  """Content hash of every file below path (names and bytes)."""
  h = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    for name in sorted(files):
      p = os.path.join(root, name)
      h.update(os.path.relpath(p, path).encode())
      with open(p, "rb") as f:
        h.update(f.read())
  return h.hexdigest()


def _main(args, preexec_fn=None):
  proc = subprocess.run([sys.executable, "-m", "cellvit_jax.main", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300, preexec_fn=preexec_fn)
  return proc.returncode, proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""


@pytest.fixture(scope="module")
def finished_workdir(tiny_data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("bad") / "run")
  train.train_and_evaluate(tiny_config(tiny_data_dir, **{"train.epochs": 1.0}), workdir)
  return workdir


# --- command line: config --------------------------------------------------------------

# Errors of flag parsing, and one error raised by the run itself (an unknown model), through
# the real command line; the other run-level errors are checked in-process below, through
# main.run, which is what the command line calls.
CLI_CASES = [
    (["--config.dataset.nme=x"],
     "unknown config key '--config.dataset.nme': config.dataset has no field 'nme'; "
     "valid fields: "),
    (["--config.model.kwargs.depthh=2"], "config.model.kwargs has no field 'depthh'"),
    (["--config.optim.lr=fast"], "--config.optim.lr"),
    (["--config.dataset.flaglimit=2.5"], "--config.dataset.flaglimit"),
    (["--config.model.name=resnet9"], "unknown model 'resnet9'; valid choices: "),
    (["--config.optim.lr=nan"], "config.optim.lr=nan must be a finite number > 0 (the peak "
                                "learning rate); pass e.g. --config.optim.lr=1e-3"),
]


@pytest.mark.parametrize("args,expect", CLI_CASES, ids=[c[1][:30] for c in CLI_CASES])
def test_command_line_config_errors(args, expect, finished_workdir, tiny_data_dir):
  before = _tree_digest(finished_workdir)
  flags = as_flags(tiny_overrides(tiny_data_dir))
  flags = [f for f in flags if f.split("=")[0] not in {a.split("=")[0] for a in args}]
  rc, line = _main(["--config=configs/customvit.py", f"--workdir={finished_workdir}", *flags,
                    *args])
  assert rc == 2 and line.startswith("error: ") and expect in line, line
  assert _tree_digest(finished_workdir) == before


def test_missing_config_file_names_the_shipped_ones():
  rc, line = _main(["--config=configs/custom_vit.py"])
  assert rc == 2 and "config file 'configs/custom_vit.py' not found" in line
  assert "customvit.py" in line


def test_workdir_that_is_a_file(tmp_path):
  path = tmp_path / "results.txt"
  path.write_text("keep me")
  rc, line = _main(["--config=configs/customvit.py", f"--workdir={path}"])
  assert rc == 2 and "is a file, not a directory" in line
  assert path.read_text() == "keep me"


def test_batch_size_not_divisible_by_devices(tiny_data_dir, tmp_path):
  env_flag = "--xla_force_host_platform_device_count=3"
  proc = subprocess.run(
      [sys.executable, "-m", "cellvit_jax.main", "--config=configs/customvit.py",
       f"--workdir={tmp_path / 'run'}", *as_flags(tiny_overrides(tiny_data_dir))],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "XLA_FLAGS": env_flag})
  line = proc.stderr.strip().splitlines()[-1]
  assert proc.returncode == 2 and "multiple of the 3 devices" in line and "try 30 or 33" in line
  assert not os.path.exists(tmp_path / "run")  # refused before anything was written


def test_file_size_limit_while_checkpointing(tiny_data_dir, tmp_path):
  """A file-size limit fails the checkpoint write: it fails cleanly, the half-written
  checkpoint never becomes the latest, and the error names the limit, not a full disk."""
  workdir = tmp_path / "run"

  def small_disk():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write() instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))

  rc, line = _main(["--config=configs/customvit.py", f"--workdir={workdir}",
                    *as_flags(tiny_overrides(tiny_data_dir, **{"train.epochs": 1.0}))],
                   preexec_fn=small_disk)
  assert rc == 2 and line.startswith("error: could not write the checkpoint"), line
  assert "file-size limit" in line and "disk is full" not in line and "free disk space" not in line
  from cellvit_jax.runs import checkpoint
  assert checkpoint.Checkpointer(str(workdir)).latest_step() is None


def test_checkpoint_write_error_says_disk_full_only_when_it_is(tmp_path, monkeypatch):
  import collections
  import errno
  from cellvit_jax.runs import checkpoint
  d = str(tmp_path)
  try:  # the real chain: orbax wraps the OSError of the write
    try:
      raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as e:
      raise ValueError("Error writing tensorstore array") from e
  except ValueError as e:
    full = str(checkpoint._write_error(d, 48, e))
  assert full.startswith(f"could not write the checkpoint of step 48 to {d}")
  assert "the disk is full: free disk space or pass another --workdir" in full
  # tensorstore's text without an errno
  assert "disk is full" in str(
      checkpoint._write_error(d, 3, ValueError("[OS error: No space left on device]")))
  # What two runs writing one workdir produced (issue 17): not a full disk.
  second_writer = ValueError("No ArrayMetadata found for process_index=0 in "
                             f"{d}/40.orbax-checkpoint-tmp-123/state")
  message = str(checkpoint._write_error(d, 48, second_writer))
  assert "disk is full" not in message and "free disk space" not in message
  assert "the disk is not full (" in message
  assert "another process writes the same directory" in message
  # ... unless the disk really has no space left.
  usage = collections.namedtuple("usage", "total used free")
  monkeypatch.setattr("shutil.disk_usage", lambda p: usage(10 << 30, (10 << 30) - 4096, 4096))
  assert "the disk is full" in str(checkpoint._write_error(d, 48, second_writer))


# --- library: config values, datasets, workdirs -----------------------------------------

@pytest.mark.parametrize("overrides,expect", [
    ({"mode": "tune"}, "unknown config.mode 'tune'; valid modes: "),
    ({"dataset.flaglimit": 0}, "FlagLimit must be at least 1 sample per class, got 0"),
    ({"model.dtype": "float16"}, "config.model.dtype='float16' is not supported"),
    ({"train.batch_size": 0}, "config.train.batch_size=0 must be a positive multiple"),
    ({"dataset.name": "no_such_set"}, "unknown dataset 'no_such_set'"),
])
def test_run_level_errors_leave_a_finished_workdir_untouched(overrides, expect, finished_workdir,
                                                             tiny_data_dir):
  from cellvit_jax import main
  before = _tree_digest(finished_workdir)
  with pytest.raises(ValueError) as e:
    main.run(tiny_config(tiny_data_dir, **{"train.epochs": 1.0, **overrides}), finished_workdir)
  assert expect in str(e.value)
  assert _tree_digest(finished_workdir) == before


# Optimiser and augmentation numbers: one-line errors naming the key and a fix, before the
# workdir exists.
@pytest.mark.parametrize("key,value,expect", [
    ("optim.lr", float("inf"), "config.optim.lr=inf must be a finite number > 0"),
    ("optim.lr", -1e-3, "config.optim.lr=-0.001 must be a finite number > 0"),
    ("optim.lr", 0.0, "config.optim.lr=0.0 must be a finite number > 0"),
    ("optim.weight_decay", -0.05, "config.optim.weight_decay=-0.05 must be a finite number >= 0"),
    ("optim.weight_decay", float("nan"),
     "config.optim.weight_decay=nan must be a finite number >= 0"),
    ("optim.label_smoothing", 1.0,
     "config.optim.label_smoothing=1.0 must be a finite number in [0, 1)"),
    ("optim.label_smoothing", -0.1,
     "config.optim.label_smoothing=-0.1 must be a finite number in [0, 1)"),
    ("optim.b2", 1.0, "config.optim.b2=1.0 must be a finite number in [0, 1)"),
    ("optim.grad_clip", float("inf"), "config.optim.grad_clip=inf must be a finite number >= 0"),
    ("augment.hed.scale", -0.1,
     "config.augment.hed.scale=-0.1 must be a finite number in [0, 1]"),
    ("augment.hed.prob", 1.5, "config.augment.hed.prob=1.5 must be a finite number in [0, 1]"),
    ("augment.color.saturation", float("nan"),
     "config.augment.color.saturation=nan must be a finite"),
    ("augment.mixup_alpha", -0.2,
     "config.augment.mixup_alpha=-0.2 must be a finite number >= 0"),
])
def test_bad_numbers_are_refused_before_anything_is_written(key, value, expect, tiny_data_dir,
                                                            tmp_path):
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(tiny_config(tiny_data_dir, **{key: value}), str(tmp_path / "run"))
  assert expect in str(e.value) and f"--config.{key}=" in str(e.value)
  assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("overrides,expect", [
    ({"train.eval_batch_size": -4}, "config.train.eval_batch_size=-4 must be a positive multiple"),
    ({"train.epochs": 0.0, "train.steps": 0, "train.examples": 0},
     "set one of config.train.epochs"),
    ({"dataset.eval_split": "validation"},
     "has no split 'validation'; it has ['train', 'val', 'test']"),
    ({"dataset.synthetic.val_specimens": 3}, "was built with"),
    ({"augment.blur.prob": 1.5}, "augment.blur"),
])
def test_bad_config_values(overrides, expect, tiny_data_dir, tmp_path):
  with pytest.raises(ValueError) as e:
    train.train_and_evaluate(tiny_config(tiny_data_dir, **overrides), str(tmp_path / "run"))
  assert expect in str(e.value)


def test_unknown_synthetic_key_is_named(tiny_data_dir):
  config = tiny_config(tiny_data_dir)
  config.dataset.synthetic.cells = 5
  with pytest.raises(ValueError,
                     match=r"config.dataset.synthetic has unknown key\(s\) \['cells'\]"):
    datasets.synthetic_spec(config.dataset)


def test_other_config_in_a_finished_workdir_changes_nothing(finished_workdir, tiny_data_dir):
  before = _tree_digest(finished_workdir)
  with pytest.raises(ValueError, match="holds a run with a different config.*model.kwargs.dim"):
    train.train_and_evaluate(
        tiny_config(tiny_data_dir, **{"train.epochs": 1.0, "model.kwargs.dim": 64}),
        finished_workdir)
  assert _tree_digest(finished_workdir) == before


def test_workdir_that_cannot_be_created():
  with pytest.raises(ValueError, match="cannot create --workdir"):
    train.train_and_evaluate(config_defaults.get_config(), "/proc/cellvit_run")


def _write(data_dir, name, splits, **kw):
  example = lambda s, label: dict(image=synthetic_cells.render(
      __import__("numpy").random.default_rng(0), [label], synthetic_cells._specimen_style(
          __import__("numpy").random.default_rng(1)))[0], label=label, specimen=s, x=-1.0, y=-1.0,
      source="t")
  return tfds_writer.write(
      data_dir, name, ["a", "b"],
      {k: [example(s, label) for s, label in v] for k, v in splits.items()}, **kw)


def test_empty_split_is_refused_and_nothing_is_left(tmp_path):
  with pytest.raises(ValueError, match="split 'val' of dataset 'empty_val' is empty"):
    _write(str(tmp_path), "empty_val",
           {"train": [("s1", 0), ("s1", 1)], "val": [], "test": [("s2", 0)]})
  assert os.listdir(tmp_path) == []


def test_shared_specimen_between_splits_is_refused_with_names(tmp_path):
  data_dir = str(tmp_path / "data")
  _write(data_dir, "leaky", {"train": [("s1", 0), ("s1", 1), ("s2", 0), ("s2", 1)],
                             "val": [("s3", 0), ("s3", 1)], "test": [("s1", 0), ("s4", 1)]})
  config = config_defaults.get_config()
  config.dataset.name, config.dataset.data_dir = "leaky", data_dir
  for k, v in tiny_overrides(data_dir).items():
    if k.startswith("model.") or k.startswith("train."):
      node, *path = k.split(".")
      target = config[node]
      for p in path[:-1]:
        target = target[p]
      target[path[-1]] = v
  config.train.epochs, config.train.batch_size, config.train.eval_batch_size = 1.0, 2, 2
  with pytest.raises(ValueError, match=r"1 specimen\(s\) in more than one split, "
                                       r"e.g. \{'s1': \['train', 'test'\]\}"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  # The linear probe fits on the training split too: the same guard.
  from cellvit_jax.config import files as config_files
  from cellvit_jax.modes import probe
  from cellvit_jax.models.fm import tiny as fm_tiny
  fm = config_files.load(os.path.join(REPO, "configs", "fm.py:phikon,probe"))
  fm.fm.weights = fm_tiny.write_tiny("phikon", str(tmp_path / "phikon"))
  fm.dataset.name, fm.dataset.data_dir = "leaky", data_dir
  with pytest.raises(ValueError, match=r"1 specimen\(s\) in more than one split"):
    probe.train_probe(fm, str(tmp_path / "probe_run"))
  config.dataset.allow_shared_specimens = True  # the explicit override trains anyway
  assert train.train_and_evaluate(config, str(tmp_path / "run2"))["finished"]


def test_flaglimit_above_every_class_keeps_all(tiny_data_dir, tmp_path):
  results = train.train_and_evaluate(
      tiny_config(tiny_data_dir,
                  **{"dataset.flaglimit": 100000, "train.steps": 2, "train.epochs": 0.0}),
      str(tmp_path / "run"))
  assert results["train_counts"] == {n: 128 for n in synthetic_cells.CLASS_NAMES}


def test_stale_synthetic_recipe_is_noticed(tiny_data_dir, tmp_path):
  copy = tmp_path / "data"
  shutil.copytree(tiny_data_dir, copy)
  meta_path = copy / "synthetic_cells_tiny" / "1.0.0" / tfds_writer.META_FILE
  import json
  meta = json.loads(meta_path.read_text())
  meta["info"]["recipe_version"] = 1
  meta_path.write_text(json.dumps(meta))
  with pytest.raises(ValueError, match="another synthetic_cells recipe"):
    datasets.open_dataset("synthetic_cells_tiny", str(copy),
                          synthetic=synthetic_cells.SyntheticSpec(**TINY_SPEC))


def test_dataset_path_that_is_a_file(tmp_path):
  (tmp_path / "cells").write_text("x")
  with pytest.raises(ValueError, match="is a file, not a dataset folder"):
    datasets.open_dataset("cells", str(tmp_path))


# --- classes: fewer than two, or one missing from the training split ----------------------

def _config_for(data_dir, name):
  """The tiny CustomViT run on dataset `name` of data_dir, at batch 2."""
  config = tiny_config(data_dir)
  config.dataset.name, config.dataset.data_dir = name, data_dir
  config.train.batch_size, config.train.eval_batch_size = 2, 2
  return config


def test_a_folder_of_one_class_is_refused_at_build_time(tmp_path, capsys):
  import fixtures
  from data_prep import build
  for i in range(12):
    fixtures.save(str(tmp_path / "ROOT" / "a" / f"P{i % 3}_{i}.png"), fixtures.patch(i))
  data_dir = tmp_path / "data"
  rc = build.build(["--source=folder", f"--input={tmp_path / 'ROOT'}", "--name=one",
                    f"--data_dir={data_dir}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == 2 and len(err) == 1, err
  assert err[0].startswith("error: --source=folder")
  assert "all 12 patches are of one class ('a')" in err[0]
  assert ("at least two classes: put each class's patches in its own subfolder, "
          "ROOT/<class>/") in err[0]
  assert not data_dir.exists()


def test_a_one_class_dataset_built_before_is_refused_at_train_time(tmp_path):
  example = lambda s: dict(image=synthetic_cells.render(
      __import__("numpy").random.default_rng(0), [0], synthetic_cells._specimen_style(
          __import__("numpy").random.default_rng(1)))[0], label=0, specimen=s, x=-1.0, y=-1.0,
      source="t")
  data_dir = str(tmp_path / "data")
  tfds_writer.write(data_dir, "old_one_class", ["a"], {  # what data_prep.build wrote before
      "train": [example("s1"), example("s2")], "val": [example("s3")], "test": [example("s4")]},
      patch_size=40)
  with pytest.raises(ValueError, match=r"dataset 'old_one_class' has 1 class \(a\); a classifier "
                     r"needs at least two: rebuild it with python -m data_prep.build"):
    train.train_and_evaluate(_config_for(data_dir, "old_one_class"), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_a_training_split_without_some_class_is_refused_naming_class_and_split(tmp_path):
  data_dir = str(tmp_path / "data")
  _write(data_dir, "no_b", {"train": [("s1", 0), ("s2", 0)], "val": [("s3", 0), ("s3", 1)],
                            "test": [("s4", 0), ("s4", 1)]})
  with pytest.raises(ValueError, match=r"class 'b' has no examples in split 'train' of dataset "
                     r"'no_b'.*FlagLimit cannot sample the classes evenly: rebuild the dataset "
                     r"with another --split_seed"):
    train.train_and_evaluate(_config_for(data_dir, "no_b"), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_error_line_stays_last_while_a_thread_still_writes_to_stderr():
  """exit_with_error's line is the last one even when a background thread (orbax's writer
  reporting the same failure) keeps printing: what _main and users read as the error."""
  code = ("import sys, threading, time\n"
          "from cellvit_jax import main\n"
          "def noise():\n"
          "  while True:\n"
          "    print('    background report', file=sys.stderr, flush=True)\n"
          "threading.Thread(target=noise, daemon=True).start()\n"
          "time.sleep(0.2)\n"
          "main.exit_with_error('could not write the checkpoint: the fix')\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2 and "background report" in proc.stderr
  assert lines[-1] == "error: could not write the checkpoint: the fix"
