"""Finished runs -> JSON lines under docs/results/, the rows that tables are generated from.

    python -m cellvit_jax.experiments.export_rows runs/a runs/b --tag=customvit_convstem \
        --recipe=base30 --output=docs/results/customvit_design.jsonl

Each run's results.json becomes one line, with the variant `tag` and the training `recipe`
it used (a short name that docs/customvit.md defines), the host CPU model (or accelerator
kind) it ran on, and the model's inference GFLOPs per 40x40 image from XLA's cost analysis
(no timing, so it is the same on any host). Lines are appended; a run already in the file
(same workdir, tag and recipe) is refused rather than written twice. Test metrics are kept
only with --with_test (final configurations): screening rows carry val only, and a run whose
config sealed its test split (config.evaluate_test=False) is refused with --with_test. The
results' `test_read` / `test_read_at` (whether and when the run read test) go into the row. The
config is dropped
from the line (it stays in the run's config.json), except the model kwargs that define the
variant.
"""
import json
import os

import jax
import jax.numpy as jnp
from absl import app, flags

from cellvit_jax import atomic_files
from cellvit_jax.experiments import cost
from cellvit_jax.runs import sealed_test

FLAGS = flags.FLAGS


def define_flags():
  """The command line's flags, defined only when run as a program (absl flags are
  process-wide; tests import this module next to other CLIs). Defining them twice is a no-op."""
  if "recipe" in flags.FLAGS:
    return
  flags.DEFINE_string("tag", "", "Variant name of these runs (one table row when seeds differ).")
  flags.DEFINE_string("recipe", "", "Training-recipe name (defined in docs/customvit.md).")
  flags.DEFINE_string("output", "", "JSON-lines file to append to.")
  flags.DEFINE_bool("with_test", False, "Keep the test metrics (final configurations only; "
                    "screening rows carry val only, so no choice can look at test).")


def model_gflops(config_dict: dict, num_classes: int) -> float:
  """XLA's FLOPs of one 40x40 image through the registry model of a run's config, in G."""
  model = cost.config_model(config_dict["model"], num_classes).counted_form()
  x = jnp.zeros((8, cost.NATIVE_SIZE, cost.NATIVE_SIZE, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, train=False))
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(variables, x).compile()
  return cost.xla_flops(compiled) / 8 / 1e9


def row(run_dir: str, tag: str, recipe: str, with_test: bool = False) -> dict:
  path = os.path.join(run_dir, "results.json")
  try:
    with open(path) as f:
      record = json.load(f)
  except FileNotFoundError:
    raise ValueError(f"{path} does not exist: is {run_dir!r} a finished run's workdir?") from None
  if not record.get("finished"):
    raise ValueError(f"{path} is not a finished run")
  if with_test and not sealed_test.record_read_test(record):
    raise ValueError(
        f"{run_dir} is a screening run (its config.evaluate_test is False: the test split was "
        "never read), so it has no test metric to export. Export it without --with_test (val "
        "only), or, for a final configuration chosen on val, train it again in a new "
        "--workdir with --config.evaluate_test=true and export that run with --with_test")
  config = record.pop("config")
  out = {"tag": tag, "recipe": recipe, **record}
  out["model_kwargs"] = config["model"].get("kwargs", {})
  out["epochs"] = config["train"]["epochs"]
  out["batch_size"] = config["train"]["batch_size"]
  out["gflops_per_image"] = round(model_gflops(config, len(record["train_counts"])), 6)
  out["host"] = cost.host_name()
  if not with_test:  # design choices are made on val; test is reported once, for finals
    out.pop("test", None)
  return out


def main(argv):
  run_dirs = argv[1:]
  if not run_dirs:
    raise app.UsageError("give one or more run workdirs")
  if not FLAGS.tag or not FLAGS.recipe or not FLAGS.output:
    raise app.UsageError("--tag, --recipe and --output are required")
  existing = []
  if os.path.exists(FLAGS.output):
    with open(FLAGS.output) as f:
      existing = [json.loads(line) for line in f if line.strip()]
  seen = {(r.get("workdir"), r.get("tag"), r.get("recipe")) for r in existing}
  new = []
  for run_dir in run_dirs:
    r = row(run_dir, FLAGS.tag, FLAGS.recipe, FLAGS.with_test)
    if (r["workdir"], r["tag"], r["recipe"]) in seen:
      raise SystemExit(f"error: {run_dir} is already in {FLAGS.output} as tag={FLAGS.tag!r} "
                       f"recipe={FLAGS.recipe!r}; nothing written")
    new.append(r)
  lines = [json.dumps(r) for r in existing + new]
  atomic_files.write_text(FLAGS.output, "\n".join(lines) + "\n")
  for r in new:
    print(f"{r['tag']} seed {r['seed']}: val {r['val']['accuracy']:.4f}, "
          f"{r['gflops_per_image']:.3f} GFLOPs -> {FLAGS.output}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
