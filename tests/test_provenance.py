"""runs/provenance.code_version: the commit of the checkout, and nothing outside one."""
import importlib.util
import os
import shutil
import subprocess

import pytest

from cellvit_jax.runs import provenance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_code_version_is_this_checkouts_commit():
  if subprocess.run(["git", "-C", REPO, "rev-parse"], capture_output=True).returncode != 0:
    pytest.skip("not a git checkout")
  full = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                        text=True).stdout.strip()
  version = provenance.code_version()
  commit, _, flag = version.partition("+")
  assert len(commit) >= 7 and full.startswith(commit)
  assert flag in ("", "dirty")


def test_code_version_outside_a_checkout_is_empty(tmp_path):
  copy = tmp_path / "provenance.py"
  shutil.copy(provenance.__file__, copy)
  spec = importlib.util.spec_from_file_location("provenance_copy", copy)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  assert module.code_version() == ""
