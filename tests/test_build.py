"""Tests of the dataset-building CLI `python -m data_prep.build` (data_prep/build.py).

End to end for every source kind (tiny inputs from tests/fixtures.py): the dataset opens with
cellvit_jax.data.datasets.open_dataset, the sidecar labels/specimens equal the decoded
records one by one, no specimen is in two splits, the split recipe is in the metadata.  Bad
inputs: one `error: ...` line, exit status 2, and an existing dataset byte-for-byte
untouched (even under --overwrite); an interrupted build leaves nothing behind.  One tiny
training run through `python -m cellvit_jax.main` on a built 3-class dataset.
"""
import dataclasses
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fixtures
from cellvit_jax.data import datasets, tfds_writer
from cellvit_jax.data.patch_reading import Options
from data_prep import build as build_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_build(capsys, *args):
  """build(args) in-process -> (exit status, stdout, stderr)."""
  rc = build_lib.build([str(a) for a in args])
  out, err = capsys.readouterr()
  return rc, out, err


def snapshot(root):
  """{relative path: (kind, size, sha256)} of everything under root, hidden files included."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for d in dirnames:
      out[os.path.relpath(os.path.join(dirpath, d), root)] = ("dir",)
    for f in filenames:
      p = os.path.join(dirpath, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, root)] = ("file", os.path.getsize(p),
                                         hashlib.sha256(fh.read()).hexdigest())
  return out


def leftovers(data_dir):
  """Temporary folders of the writer still lying in data_dir."""
  return [n for n in os.listdir(data_dir) if n.startswith(".")]


def check_dataset(data_dir, name, expect_classes=None, expect_total=None):
  """Opens the dataset and checks sidecar == records, disjoint specimens, the split recipe."""
  ds = datasets.open_dataset(name, str(data_dir))
  if expect_classes is not None:
    assert ds.class_names == expect_classes
  assert datasets.shared_specimens(ds) == {}
  recipe = ds.meta["info"]["split"]
  assert recipe["unit"] == "specimen" and recipe["seed"] == 0
  assert recipe["fractions"] == {"train": 0.7, "val": 0.15, "test": 0.15}
  assert ds.splits == ["train", "val", "test"]
  total = 0
  for split in ds.splits:
    labels, specimens = ds.labels(split), ds.specimens(split)
    src = ds.source(split)
    assert len(src) == len(labels) > 0
    for i in range(len(src)):
      rec = src[i]
      assert int(rec["label"]) == labels[i]
      spec = rec["specimen"]
      spec = spec.decode() if isinstance(spec, bytes) else spec
      assert spec == specimens[i]
      assert recipe["specimen_to_split"][spec] == split
      assert np.asarray(rec["image"]).shape == (40, 40, 3)
    counts = np.bincount(labels, minlength=ds.num_classes).tolist()
    assert ds.meta["splits"][split]["counts"] == counts
    total += len(labels)
  if expect_total is not None:
    assert total == expect_total
  assert set(recipe["specimen_to_split"]) == {
      s for split in ds.splits for s in ds.specimens(split).tolist()}
  return ds


# ---------------------------------------------------------------------------------------------
# flags

def test_every_option_is_a_flag_of_the_same_name():
  from absl import flags
  fv = flags.FlagValues()
  build_lib.define_flags(fv)
  for field in dataclasses.fields(Options):
    assert field.name in fv, f"Options.{field.name} has no --{field.name} flag"
    assert fv[field.name].default == getattr(Options(), field.name)


def test_parse_fractions():
  assert build_lib.parse_fractions("train=0.8, test=0.2") == {"train": 0.8, "test": 0.2}
  for bad, msg in (("train=0.7,val=0.2", "sum to 1"), ("train:1", "split=fraction"),
                   ("train=0.5,train=0.5", "twice"), ("", "empty"), ("a=1,b=0", "> 0")):
    with pytest.raises(build_lib.BuildError, match=msg):
      build_lib.parse_fractions(bad)


# ---------------------------------------------------------------------------------------------
# end to end, every source kind

@pytest.mark.parametrize("kind", ["folder", "csv", "pannuke", "lizard", "ihc_demo"])
def test_build_each_source(kind, request, tmp_path, capsys):
  inputs = {"folder": "folder_root", "csv": "patch_manifest", "pannuke": "pannuke_root",
            "lizard": "lizard_root"}
  args = [f"--source={kind}", "--name=cells", f"--data_dir={tmp_path / 'tfds'}"]
  if kind in inputs:
    args.append(f"--input={request.getfixturevalue(inputs[kind])}")
  rc, out, err = run_build(capsys, *args)
  assert rc == 0, err
  expected = {
      "folder": (["lymphocyte", "stroma cells", "tumour"], 6),
      "csv": (["CD8+", "CD8-"], 4),
      "pannuke": (["neoplastic", "inflammatory", "connective", "dead", "epithelial"], 7),
      "lizard": (["neutrophil", "epithelial", "lymphocyte", "plasma", "eosinophil",
                  "connective"], 7),
      "ihc_demo": (["dab_negative", "dab_positive"], None),
  }[kind]
  ds = check_dataset(tmp_path / "tfds", "cells", *expected)
  # The printed table: a header with every class, one row per split, totals, and the place.
  lines = out.splitlines()
  assert lines[0].split()[0] == "split" and all(c in lines[0] for c in ds.class_names)
  assert [line.split()[0] for line in lines[1:5]] == ["train", "val", "test", "all"]
  assert str(sum(len(ds.labels(s)) for s in ds.splits)) in lines[4]
  assert ds.path in out and "--config.dataset.name=cells" in out
  info = ds.meta["info"]
  assert info["source_kind"] == kind and info["skipped"] == 0
  assert info["options"]["patch_size"] == 40
  if kind == "ihc_demo":
    assert 0.03 < info["reader_info"]["ihc_threshold"] < 0.07
  assert leftovers(tmp_path / "tfds") == []


def test_split_flags_are_recorded(folder_root, tmp_path, capsys):
  rc, out, err = run_build(capsys, "--source=folder", f"--input={folder_root}", "--name=c",
                           f"--data_dir={tmp_path}", "--split_fractions=train=0.5,test=0.5",
                           "--split_seed=3", "--class_names=tumour,stroma cells,lymphocyte",
                           "--specimen_pattern=^(?P<specimen>P[^_]*)_")
  assert rc == 0, err
  ds = datasets.open_dataset("c", str(tmp_path))
  assert ds.splits == ["train", "test"] and ds.class_names == ["tumour", "stroma cells",
                                                               "lymphocyte"]
  assert ds.meta["info"]["split"]["fractions"] == {"train": 0.5, "test": 0.5}
  assert ds.meta["info"]["split"]["seed"] == 3
  assert ds.meta["info"]["options"]["specimen_pattern"] == "^(?P<specimen>P[^_]*)_"
  assert "note: training reads splits train/val/test" in out


def test_cli_subprocess(folder_root, tmp_path):
  """The real entry point: output, exit status 0; a bad input is one line, status 2."""
  env = dict(os.environ, PYTHONPATH=REPO)
  data_dir = tmp_path / "tfds"
  cmd = [sys.executable, "-m", "data_prep.build", "--source=folder", f"--input={folder_root}",
         "--name=sub", f"--data_dir={data_dir}"]
  ok = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert ok.returncode == 0, ok.stderr
  assert "lymphocyte" in ok.stdout and os.path.join(str(data_dir), "sub", "1.0.0") in ok.stdout
  assert "Traceback" not in ok.stderr
  check_dataset(data_dir, "sub", ["lymphocyte", "stroma cells", "tumour"], 6)
  before = snapshot(data_dir)
  (folder_root / "tumour" / "P5_broken.png").write_bytes(b"not a png")
  bad = subprocess.run(cmd + ["--overwrite"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
  assert bad.returncode == 2
  assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("error: ")
  assert "P5_broken.png" in bad.stderr and "--skip_bad" in bad.stderr
  assert snapshot(data_dir) == before


# ---------------------------------------------------------------------------------------------
# bad input: one error line, exit 2, the existing dataset untouched

@pytest.fixture(scope="module")
def built_template(tmp_path_factory):
  """A data_dir holding dataset 'cells' built from the folder fixture (copied per test)."""
  base = tmp_path_factory.mktemp("template")
  root = fixtures.write_folder_root(base / "input")
  data_dir = base / "tfds"
  assert build_lib.build(["--source=folder", f"--input={root}", "--name=cells",
                          f"--data_dir={data_dir}"]) == 0
  return data_dir


@pytest.fixture
def existing(built_template, tmp_path, capsys):
  """(data_dir with dataset 'cells', its snapshot)."""
  data_dir = tmp_path / "tfds"
  shutil.copytree(built_template, data_dir)
  capsys.readouterr()
  return data_dir, snapshot(data_dir)


def bad_build(capsys, existing, *args, rc=2):
  data_dir, before = existing
  got, out, err = run_build(capsys, *args, f"--data_dir={data_dir}")
  assert got == rc, (out, err)
  error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
  assert len(error_lines) == 1, err
  assert snapshot(data_dir) == before, "the existing dataset was changed"
  assert leftovers(data_dir) == []
  return error_lines[0]


def test_existing_name_without_overwrite(existing, folder_root, capsys):
  msg = bad_build(capsys, existing, "--source=folder", f"--input={folder_root}", "--name=cells")
  assert "'cells' already exists" in msg and "--overwrite" in msg
  # With --overwrite and another seed it is replaced, and nothing else is left.
  data_dir = existing[0]
  rc, _, err = run_build(capsys, "--source=folder", f"--input={folder_root}", "--name=cells",
                         f"--data_dir={data_dir}", "--overwrite", "--split_seed=5")
  assert rc == 0, err
  assert datasets.open_dataset("cells", str(data_dir)).meta["info"]["split"]["seed"] == 5
  assert leftovers(data_dir) == [] and os.listdir(data_dir) == ["cells"]


@pytest.mark.parametrize("args, expect", [
    (["--source=folder", "--name=x"], ["--input is required", "ROOT/<class>"]),
    (["--source=csv", "--input=/no/such/manifest.csv", "--name=x"],
     ["/no/such/manifest.csv", "does not exist"]),
    (["--source=mnist", "--name=x"], ["--source=mnist", "folder"]),
    (["--name=x"], ["--source is required"]),
    (["--source=ihc_demo"], ["--name is required"]),
    (["--source=ihc_demo", "--name=synthetic_cells_x"], ["reserved"]),
    (["--source=ihc_demo", "--name=a/b"], ["plain folder name"]),
    (["--source=ihc_demo", "--name=x", "--split_fractions=train=0.9"], ["sum to 1"]),
    (["--source=ihc_demo", "--name=x", "--pad_mode=mirror"], ["pad_mode 'mirror'"]),
    (["--source=ihc_demo", "--name=x", "--spec_pattern=a"], ["spec_pattern", "--help"]),
    (["--source=ihc_demo", "--name=cells", "--overwrite", "--ihc_grid=1"],
     ["1 distinct specimen", "--ihc_grid"]),
    (["--source=ihc_demo", "--name=x", "--class_names=tumour"], ["tumour", "dab_negative"]),
])
def test_bad_arguments(existing, capsys, args, expect):
  msg = bad_build(capsys, existing, *args)
  for text in expect:
    assert text in msg, msg


def test_overwrite_refuses_a_folder_that_is_not_a_dataset(existing, capsys):
  data_dir, _ = existing
  os.makedirs(data_dir / "notes")
  (data_dir / "notes" / "keep.txt").write_text("mine")
  msg = bad_build(capsys, (data_dir, snapshot(data_dir)), "--source=ihc_demo", "--name=notes",
                  "--overwrite")
  assert "not a dataset built by data_prep.build" in msg


def test_too_few_specimens_names_the_specimen_flags(existing, tmp_path, capsys):
  root = tmp_path / "two"
  fixtures.save(str(root / "a" / "P1_x.png"), fixtures.patch(1))
  fixtures.save(str(root / "b" / "P2_y.png"), fixtures.patch(2))
  msg = bad_build(capsys, existing, "--source=folder", f"--input={root}", "--name=cells",
                  "--overwrite")
  assert "2 distinct specimen" in msg and "--specimen_pattern" in msg
  assert "--split_fractions" in msg


def test_corrupt_file_without_and_with_skip_bad(existing, folder_root, capsys):
  (folder_root / "tumour" / "P9_broken.png").write_bytes(b"this is not a png")
  msg = bad_build(capsys, existing, "--source=folder", f"--input={folder_root}", "--name=cells",
                  "--overwrite")
  assert "P9_broken.png" in msg and "corrupt" in msg and "--skip_bad" in msg
  data_dir, _ = existing
  rc, out, err = run_build(capsys, "--source=folder", f"--input={folder_root}",
                           "--name=skipped", f"--data_dir={data_dir}", "--skip_bad")
  assert rc == 0, err
  assert "skipped 1 bad input(s)" in out
  ds = check_dataset(data_dir, "skipped", ["lymphocyte", "stroma cells", "tumour"], 6)
  info = ds.meta["info"]
  assert info["skipped"] == 1 and "P9_broken.png" in info["skipped_inputs"][0][0]
  assert "corrupt" in info["skipped_inputs"][0][1]


def test_data_dir_without_write_permission(existing, capsys):
  data_dir, _ = existing
  os.chmod(data_dir, 0o555)
  try:
    if os.access(data_dir, os.W_OK):
      pytest.skip("running as root: chmod does not stop writing")
    msg = bad_build(capsys, (data_dir, snapshot(data_dir)), "--source=ihc_demo", "--name=new")
    assert str(data_dir) in msg and "write permission" in msg and "--data_dir" in msg
  finally:
    os.chmod(data_dir, 0o755)


def test_data_dir_without_write_permission_simulated(existing, capsys, monkeypatch):
  """The same check where chmod cannot bite (root): os.access says the folder is read-only."""
  data_dir, _ = existing
  real_access = os.access
  monkeypatch.setattr(os, "access", lambda p, mode, **kw: (
      False if os.path.abspath(p) == str(data_dir) and mode & os.W_OK else real_access(p, mode)))
  msg = bad_build(capsys, existing, "--source=ihc_demo", "--name=new")
  assert str(data_dir) in msg and "write permission" in msg


@pytest.fixture
def break_writer_after(monkeypatch):
  """Makes every split's example iterator raise `exc` after n examples, inside the writer."""
  def arm(n, exc):
    real_write = tfds_writer.write

    def failing(it):
      for i, ex in enumerate(it):
        if i == n:
          raise exc
        yield ex

    def write(data_dir, name, class_names, splits, **kw):
      return real_write(data_dir, name, class_names,
                        {s: failing(it) for s, it in splits.items()}, **kw)
    monkeypatch.setattr(tfds_writer, "write", write)
  return arm


def test_interrupted_build_leaves_nothing(existing, break_writer_after, capsys):
  data_dir, _ = existing
  break_writer_after(5, KeyboardInterrupt())
  msg = bad_build(capsys, existing, "--source=ihc_demo", "--name=fresh", rc=130)
  assert "interrupted" in msg and "nothing was written" in msg
  assert not os.path.exists(data_dir / "fresh")
  # Interrupting a replacement keeps the old dataset as it was.
  bad_build(capsys, existing, "--source=ihc_demo", "--name=cells", "--overwrite", rc=130)
  check_dataset(data_dir, "cells", ["lymphocyte", "stroma cells", "tumour"], 6)


def test_disk_full_midway_is_an_error_line(existing, break_writer_after, capsys):
  break_writer_after(3, OSError(errno.ENOSPC, "No space left on device"))
  msg = bad_build(capsys, existing, "--source=ihc_demo", "--name=cells", "--overwrite")
  assert "No space left on device" in msg and "nothing was written" in msg


# ---------------------------------------------------------------------------------------------
# training on a built dataset with another number of classes

def test_train_on_built_three_class_dataset(tmp_path, capsys):
  root = tmp_path / "three"
  colours = {"alpha": (70, 40, 120), "beta": (140, 90, 40), "gamma": (40, 40, 40)}
  for c, (name, colour) in enumerate(colours.items()):
    for s in range(6):
      for k in range(3):
        img = fixtures.draw_square(fixtures.blank(40, 40), 20, 20, r=3 + k, colour=colour)
        fixtures.save(str(root / name / f"S{s}_{k}.png"), img)
  data_dir = tmp_path / "tfds"
  rc, _, err = run_build(capsys, "--source=folder", f"--input={root}", "--name=three",
                         f"--data_dir={data_dir}")
  assert rc == 0, err
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "cellvit_jax.main", "--config=configs/customvit.py",
         "--config.dataset.name=three", f"--config.dataset.data_dir={data_dir}",
         f"--workdir={workdir}", "--config.model.kwargs.dim=32", "--config.model.kwargs.depth=1",
         "--config.model.kwargs.num_heads=2", "--config.train.steps=3",
         "--config.train.epochs=0", "--config.train.batch_size=16",
         "--config.train.eval_batch_size=16"]
  proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                        capture_output=True, text=True, timeout=240)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / "results.json") as f:
    results = json.load(f)
  assert results["dataset"] == "three" and results["steps"] == 3
  assert list(results["train_counts"]) == ["alpha", "beta", "gamma"]
  for split in ("val", "test"):
    assert list(results[split]["per_class_recall"]) == ["alpha", "beta", "gamma"]
    assert np.asarray(results[split]["confusion_matrix"]).shape == (3, 3)
