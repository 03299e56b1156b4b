"""Speed of the synthetic_cells_v3 renderer as a ratio against recipe 2 (synthetic_cells_v2).

Part 'render': generate_specimen of `--specimens` specimens x 800 cells (the default spec's
size) per recipe, the recipes interleaved specimen by specimen so that a shared, loaded host
slows both alike; prints wall and process CPU seconds per 1000 patches and the ratio
v3/v2 of each. Part 'build': the whole default dataset (100 x 800 patches) of each recipe,
written with datasets.build_synthetic into a temporary folder (rendering in its thread pool +
writing), v2 then v3; wall and CPU seconds and the ratio.

  python -m benchmarks.synthetic_recipes [--part render|build|all] [--specimens 4]
"""
import os
import shutil
import tempfile
import time

from absl import app, flags

from cellvit_jax.data import datasets, synthetic_cells, synthetic_cells_v3

FLAGS = flags.FLAGS
flags.DEFINE_enum("part", "render", ["render", "build", "all"], "What to time.")
flags.DEFINE_integer("specimens", 4, "render: specimens per recipe.")

RECIPES = (("v2", synthetic_cells), ("v3", synthetic_cells_v3))


def render_part(specimens):
  spec = synthetic_cells.SyntheticSpec()
  wall = {k: 0.0 for k, _ in RECIPES}
  cpu = dict(wall)
  for s in range(specimens):
    for key, recipe in RECIPES:
      t, c = time.perf_counter(), time.process_time()
      recipe.generate_specimen(spec, s)
      wall[key] += time.perf_counter() - t
      cpu[key] += time.process_time() - c
  per = 1000.0 / (specimens * spec.cells_per_specimen)
  for key, _ in RECIPES:
    print(f"render {key}: {wall[key] * per:.3f} s wall, {cpu[key] * per:.3f} s CPU "
          "per 1000 patches")
  print(f"render ratio v3/v2: wall {wall['v3'] / wall['v2']:.2f}, CPU {cpu['v3'] / cpu['v2']:.2f}")


def build_part():
  spec = synthetic_cells.SyntheticSpec()
  out = {}
  root = tempfile.mkdtemp(prefix="synthetic_recipes_")
  try:
    for key, _ in RECIPES:
      t, c = time.perf_counter(), time.process_time()
      datasets.build_synthetic(root, f"synthetic_cells_{key}", spec)
      out[key] = (time.perf_counter() - t, time.process_time() - c)
      print(f"build {key}: {out[key][0]:.1f} s wall, {out[key][1]:.1f} s CPU "
            f"({spec.num_specimens * spec.cells_per_specimen} patches, {os.cpu_count()} cores)")
  finally:
    shutil.rmtree(root, ignore_errors=True)
  print(f"build ratio v3/v2: wall {out['v3'][0] / out['v2'][0]:.2f}, "
        f"CPU {out['v3'][1] / out['v2'][1]:.2f}")


def main(argv):
  del argv
  print(f"load average at start: {os.getloadavg()}")
  if FLAGS.part in ("render", "all"):
    render_part(FLAGS.specimens)
  if FLAGS.part in ("build", "all"):
    build_part()
  print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
  app.run(main)
