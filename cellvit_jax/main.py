"""Entry point: python -m cellvit_jax.main --config=configs/customvit.py [--workdir=DIR]

Any config field can be overridden: --config.dataset.flaglimit=1024. The mode
(config.mode) picks what runs.
"""
import logging as logging_std
import os
import sys
import threading

from absl import app, flags, logging
from ml_collections import config_flags

from cellvit_jax import compile_cache, parallel
from cellvit_jax.config import files as config_files
from cellvit_jax.modes import blur_study, finetune, predict, probe, robustness, study, train

config_flags.DEFINE_config_file("config", None, "A config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", "", "Output directory; default runs/<model name>/ (mode=train), "
                    "runs/<fm preset>_<mode>/ (mode=probe, finetune), <config.blur.run>/blur/ "
                    "(mode=blur), <config.robustness.run>/robustness/ (mode=robustness), "
                    "study/ (mode=study), <config.predict.run>/predict/ (mode=predict).")
FLAGS = flags.FLAGS


MODES = {
    "train": train.run_mode,
    "probe": probe.run_mode,
    "finetune": finetune.run_mode,
    "blur": blur_study.run_mode,
    "robustness": robustness.run_mode,
    # A study runs its cells through this same table, so FM modes registered here become
    # study rows without the study knowing them.
    "study": lambda config, workdir: study.run_mode(config, workdir, MODES),
    "predict": predict.run_mode,
}


def run(config, workdir: str = ""):
  """Runs config.mode; returns nothing, raises ValueError-like errors on bad input.

  An empty workdir means the mode's default (train: runs/<model name>/)."""
  if config.mode not in MODES:
    raise ValueError(f"unknown config.mode {config.mode!r}; "
                     f"valid modes: {', '.join(sorted(MODES))}")
  compile_cache.enable(config.get("compile_cache_dir", "auto"))
  MODES[config.mode](config, workdir)


class _OwnLogsOnly(logging_std.Filter):
  """Keeps our INFO lines and every library's warnings; orbax and tfds chat at INFO."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or "cellvit_jax" in record.pathname


def quiet_library_logs():
  logging.get_absl_handler().addFilter(_OwnLogsOnly())
  logging.set_verbosity(logging.INFO)


def _check_config_file(argv):
  for arg in argv:
    if arg.startswith("--config="):
      path = arg.split("=", 1)[1].partition(":")[0]
      if not os.path.isfile(path):
        shipped = (sorted(f for f in os.listdir("configs") if f.endswith(".py"))
                   if os.path.isdir("configs") else [])
        raise ValueError(f"config file {path!r} not found; pass one of configs/*.py"
                         + (f" ({', '.join(shipped)})" if shipped else ""))


def _unknown_override(argv):
  """The first --config.a.b=... override naming no field of the config file, explained."""
  config_args = [a for a in argv if a.startswith("--config=")]
  if not config_args:
    return None
  try:
    config = config_files.load(config_args[-1].split("=", 1)[1])
  except Exception:  # the config file itself is broken: the original error says more
    return None
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    node, walked = config, []
    for part in arg[len("--config."):].split("=", 1)[0].split("."):
      if not hasattr(node, "keys") or part not in node:
        where = "config" + "".join(f".{w}" for w in walked)
        valid = sorted(node.keys()) if hasattr(node, "keys") else []
        return (f"unknown config key {arg.split('=', 1)[0]!r}: {where} has no field {part!r}"
                + (f"; valid fields: {', '.join(valid)}" if valid else ""))
      node = node[part]
      walked.append(part)
  return None


def parse_flags(argv):
  """absl flag parsing with one-line errors (an unknown config key, a bad value) and exit 2."""
  try:
    _check_config_file(argv)
    return FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    text = str(e)
    if "Traceback (most recent call last)" in text:  # a config file's get_config raised: its
      # own message (the last line) is the one that names the input and the fix
      text = text.split("Traceback")[0].strip() + " " + text.strip().splitlines()[-1]
    message = _unknown_override(argv) or " ".join(text.split())
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.config is None:
    raise app.UsageError("pass --config=configs/<name>.py (e.g. configs/customvit.py)")
  parallel.maybe_initialize_distributed()
  quiet_library_logs()
  try:
    run(FLAGS.config, FLAGS.workdir)
  except (ValueError, OSError, FloatingPointError) as e:
    exit_with_error(" ".join(str(e).split()))


# The image exit_with_error replaces the process with: writes argv[1] to stderr, exits 2.
_WRITE_LINE_AND_EXIT = ("import os, sys\n"
                        "try:\n"
                        "  sys.stderr.buffer.write(os.fsencode(sys.argv[1])); sys.stderr.flush()\n"
                        "finally:\n"
                        "  os._exit(2)\n")


def exit_with_error(message: str):
  """Bad input: one line naming the input and the fix, no traceback, and the last line the
  process writes, starting a line of its own.

  Other threads (orbax's checkpoint writer reporting the same failure, the runtime's C++
  logging) may be writing to stderr. A write already inside the kernel lands after anything
  written now, and no stream lock orders it against ours: with PYTHONUNBUFFERED, or from C,
  there is none. So the process execs a minimal interpreter (same pid, same fds): the kernel
  ends every other thread, their writes finished or abandoned, before the new image writes
  the line and exits 2. The line follows a newline while other threads live (print writes
  its text and newline apart). No interpreter shutdown, as with os._exit (every file we
  write is already atomic)."""
  sys.stdout.flush()
  try:
    sys.stderr.flush()
  except (OSError, ValueError):  # closed or broken: the line below is all that can follow
    pass
  lead = "\n" if threading.active_count() > 1 else ""
  line = f"{lead}error: {message}\n"
  if os.name == "posix" and sys.executable:
    try:
      os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", _WRITE_LINE_AND_EXIT, line])
    except OSError:  # no interpreter to exec: write it here, unordered against other threads
      pass
  os.write(2, line.encode())
  os._exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
