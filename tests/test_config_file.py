"""config_files.load, the one config loader: paths from the working directory or explicit, never
from where the package lives; configs deriving from a sibling find it from any directory."""
import os

import pytest

from cellvit_jax.config import files as config_files
from conftest import REPO


def test_relative_paths_read_from_the_working_directory_or_base_dir(tmp_path, monkeypatch):
  (tmp_path / "mine.py").write_text("def get_config(arg=''):\n  return {'arg': arg}\n")
  monkeypatch.chdir(tmp_path)
  assert config_files.load("mine.py") == {"arg": ""}
  assert config_files.load("mine.py:uni,probe") == {"arg": "uni,probe"}
  monkeypatch.chdir(REPO)
  with pytest.raises(FileNotFoundError,
                     match=f"'mine.py' not found.*{os.path.join(REPO, 'mine.py')}"):
    config_files.load("mine.py")
  assert config_files.load("mine.py:x", base_dir=str(tmp_path)) == {"arg": "x"}
  # An absolute path ignores base_dir.
  assert config_files.load(f"{tmp_path}/mine.py", base_dir="/nonexistent") == {"arg": ""}


def test_derived_configs_load_from_any_working_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # no configs/ here
  blur_aug = config_files.load(os.path.join(REPO, "configs", "customvit_blur_aug.py"))
  assert blur_aug.model.name == "customvit" and blur_aug.augment.blur.prob == 0.5
  example = config_files.load(os.path.join(REPO, "configs", "study_example.py"))
  assert example.mode == "study" and sorted(example.study.models) == ["customvit", "resnet18_w16"]
  assert config_files.load(os.path.join(REPO, "configs", "fm.py:uni,probe")).mode == "probe"


def test_set_dotted_sets_the_field_each_dotted_key_names_and_nothing_else():
  from cellvit_jax.config import defaults
  config = defaults.get_config()
  before = config.to_dict()
  config_files.set_dotted(config, {"train.epochs": 3.5, "dataset.synthetic.seed": 7})
  after = config.to_dict()
  assert after["train"]["epochs"] == 3.5 and after["dataset"]["synthetic"]["seed"] == 7
  after["train"]["epochs"] = before["train"]["epochs"]
  after["dataset"]["synthetic"]["seed"] = before["dataset"]["synthetic"]["seed"]
  assert after == before
  with pytest.raises(KeyError):
    config_files.set_dotted(config, {"no_such_section.epochs": 1})
