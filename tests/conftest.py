"""Input fixtures shared by the test files; the writers themselves are in tests/fixtures.py."""
import pytest

import fixtures


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
