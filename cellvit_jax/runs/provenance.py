"""Which code produced a row: the git commit of the checkout the package runs from."""
import os
import subprocess


def code_version() -> str:
  """Short commit hash, with '+dirty' when tracked files differ from it; '' outside a git
  checkout (an installed wheel), so a row never claims a version it cannot know."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, timeout=10)
    if commit.returncode != 0:
      return ""
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return ""
  return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
