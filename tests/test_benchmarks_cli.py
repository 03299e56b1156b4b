"""Every benchmark runs as documented, `python -m benchmarks.<name>` from the repository root,
without PYTHONPATH; and the docs show that form only."""
import os
import re
import subprocess
import sys
import textwrap

from conftest import REPO

MODULES = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "benchmarks"))
                 if f.endswith(".py") and f != "__init__.py")
DOCS = ["README.md", "docs/benchmarks.md", "docs/blur.md", "docs/foundation_models.md",
        "benchmarks/RESULTS.md", "benchmarks/FINDINGS.md"]

# One interpreter for all (each start imports JAX): runpy.run_module is what `python -m` runs.
# absl flags are process-wide and each benchmark defines its own (--batch, --repeats, ...), as
# separate programs may: the flags one benchmark's file defined are removed before the next.
HELP_ALL = textwrap.dedent("""
    import contextlib, io, runpy, sys, warnings
    from absl import flags
    warnings.simplefilter("ignore", RuntimeWarning)  # runpy: a module already imported by another
    for name in sys.argv[1:]:
      sys.argv = [name, "--help"]
      out = io.StringIO()
      try:
        with contextlib.redirect_stdout(out):
          runpy.run_module("benchmarks." + name, run_name="__main__", alter_sys=True)
        code = "returned"
      except SystemExit as e:
        code = e.code
      print("RESULT", name, code, "usage" in out.getvalue().lower() or name in out.getvalue())
      for module, defined in flags.FLAGS.flags_by_module_dict().items():
        if module.endswith(f"benchmarks/{name}.py"):
          for flag in list(defined):
            if flag.name in flags.FLAGS:
              delattr(flags.FLAGS, flag.name)
""")


def test_each_benchmark_shows_its_help_without_pythonpath():
  assert {"train_step", "record", "blur", "input_pipeline"} <= set(MODULES)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  proc = subprocess.run([sys.executable, "-c", HELP_ALL, *MODULES], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = {line.split()[1]: line.split()[2:] for line in proc.stdout.splitlines()
             if line.startswith("RESULT")}
  assert sorted(results) == MODULES, proc.stderr[-3000:]
  for name, (code, shown) in results.items():
    # absl exits 0 or 1 after printing --help, depending on how the program was started.
    assert code in ("0", "1") and shown == "True", (name, code, shown)


def test_the_docs_show_the_commands_that_work():
  for doc in DOCS:
    with open(os.path.join(REPO, doc)) as f:
      text = f.read()
    # RESULTS.md's history note.
    text = text.replace("`PYTHONPATH=. python benchmarks/<name>.py`", "")
    assert "PYTHONPATH" not in text, doc
    assert not re.search(r"python3? benchmarks/", text), doc
    for name in re.findall(r"python -m benchmarks\.(\w+)", text):
      assert name in MODULES or name == "record", (doc, name)


# A benchmark (argv[2]) that starts a child and outlives record's timeout.
RECORD_TIMEOUT = textwrap.dedent("""
    import sys
    from absl import flags
    from benchmarks import record
    record.BENCHMARKS = (("stuck", sys.executable + " " + sys.argv[2], "why"),)
    record.define_flags()
    flags.FLAGS([sys.argv[0], "--output=" + sys.argv[1], "--timeout=3"])
    record.main([])
""")
STUCK = textwrap.dedent("""
    import subprocess, time
    child = subprocess.Popen(["sleep", "60"])
    print("CHILD", child.pid, flush=True)
    time.sleep(60)
""")


def test_record_stops_a_timed_out_benchmark_with_the_processes_it_started(tmp_path):
  output, stuck = tmp_path / "RESULTS.md", tmp_path / "stuck.py"
  stuck.write_text(STUCK)
  proc = subprocess.run([sys.executable, "-c", RECORD_TIMEOUT, str(output), str(stuck)],
                        cwd=REPO, capture_output=True, text=True, timeout=60)
  assert proc.returncode == 0, proc.stderr[-2000:]
  text = output.read_text()
  assert "exit status timeout after 3 s" in text
  child = int(re.search(r"CHILD (\d+)", text).group(1))
  # Killed with its group (a zombie for a moment at most: its parent died with it).
  state = ""
  if os.path.exists(f"/proc/{child}/stat"):
    with open(f"/proc/{child}/stat") as f:
      state = f.read().split(")")[-1].split()[0]
  assert state in ("", "Z"), state


# --quick's settings apply only to the flags not given on the command line.
QUICK = textwrap.dedent("""
    from absl import flags
    from benchmarks import train_step
    train_step.define_flags()
    flags.FLAGS(["train_step", "--quick", "--batch=32"])
    print(train_step.apply_quick(flags.FLAGS))
    f = flags.FLAGS
    print("RESULT", f.batch, f.repeats, f.steps, f["no-compile"].value)
""")


def test_train_step_quick_sets_only_the_flags_not_given():
  proc = subprocess.run([sys.executable, "-c", QUICK], cwd=REPO, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "RESULT 32 5 1 True" in proc.stdout
  assert "--quick: batch 32, 5 repeat(s) of 1 step(s), torch.compile skipped" in proc.stdout
