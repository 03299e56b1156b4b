"""Inference cost of a model: parameters, GFLOPs per image, images/s at chosen batch sizes.

    python -m cellvit_jax.experiments.cost                       # every shipped model config
    python -m cellvit_jax.experiments.cost --configs=configs/customvit.py,configs/resnet18.py \
        --batch_sizes=1,256 --output=cost.json --markdown=cost.md
    python -m cellvit_jax.experiments.cost --update=docs/models.md  # rewrites the table there
    python -m cellvit_jax.experiments.cost --rows=docs/results/cost_cpu.json --update=docs/models.md
                                                   # the table of stored rows, nothing measured

GFLOPs come from XLA's cost analysis of the compiled inference function (uint8 patches ->
float -> resize to the model's input if it differs -> normalise -> model, eval mode) at
the largest batch size, divided by that batch: what the device actually runs, not a
hand count. Images/s is wall time of that same compiled function on the current device,
timed after a warm-up call, for at least `min_seconds` per batch size. These figures feed
the study's cost table; they are measurements of this machine, so compare them only
with figures from the same device.
"""
import json
import os
import platform
import sys
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cellvit_jax import atomic_files, models
from cellvit_jax.config import files as config_files
from cellvit_jax.models import dtypes
from cellvit_jax.ops import normalize

NATIVE_SIZE = 40  # the study's patch side; the FMs resize it to their own input


def xla_flops(compiled) -> float:
  """FLOPs of a compiled function from XLA's cost analysis (dict or one-element list)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", float("nan")))


def host_name() -> str:
  """The accelerator kind, or the CPU model from /proc/cpuinfo (hosts differ from day to day)."""
  device = jax.devices()[0]
  if device.platform != "cpu":
    return device.device_kind
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "cpu"


def measure_forward(forward: Callable, variables, *, batch_sizes: Sequence[int] = (1, 256),
                    native_size: int = NATIVE_SIZE, min_seconds: float = 1.0,
                    seed: int = 0) -> dict:
  """Times `forward(variables, uint8 images) -> logits` at each batch size.

  Returns {"gflops_per_image", "images_per_sec": {str(batch): float}, "device", "host"}.
  """
  if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
    raise ValueError(f"batch_sizes must be positive integers, got {list(batch_sizes)}")
  fn = jax.jit(forward)
  rng = np.random.default_rng(seed)
  out = {"images_per_sec": {}}
  for b in sorted({int(b) for b in batch_sizes}):
    images = jnp.asarray(rng.integers(0, 256, (b, native_size, native_size, 3), dtype=np.uint8))
    compiled = fn.lower(variables, images).compile()
    out["gflops_per_image"] = xla_flops(compiled) / b / 1e9  # the largest batch wins
    jax.block_until_ready(compiled(variables, images))       # warm-up
    calls, start = 0, time.perf_counter()
    while True:
      jax.block_until_ready(compiled(variables, images))
      calls += 1
      elapsed = time.perf_counter() - start
      if elapsed >= min_seconds and calls >= 2:
        break
    out["images_per_sec"][str(b)] = calls * b / elapsed
  out["device"] = jax.devices()[0].device_kind
  out["host"] = host_name()
  return out


def model_forward(model, normalize_cfg, input_size: int):
  """uint8 native patches -> logits, the way evaluation runs the model."""
  def forward(variables, images):
    x = normalize.to_float(images)
    if x.shape[1] != input_size:
      x = jax.image.resize(x, (x.shape[0], input_size, input_size, x.shape[3]), "bilinear")
    x = normalize.normalize(x, normalize_cfg.mean, normalize_cfg.std)
    return model.apply(variables, x, train=False).astype(jnp.float32)
  return forward


def config_model(model_config, num_classes: int = 4):
  """The registry model a config.model section describes: a ConfigDict, or the plain dict of a
  results.json's config["model"] (its kwargs as JSON wrote them)."""
  return models.build(model_config["name"], num_classes,
                      dtype=dtypes.compute_dtype(model_config["dtype"]),
                      **model_config.get("kwargs", {}))


def config_cost(model_cfg, normalize_cfg, *, num_classes: int = 4,
                batch_sizes: Sequence[int] = (1, 256), min_seconds: float = 1.0) -> dict:
  """Cost of the registry model a training config describes, at 40x40 input."""
  model = config_model(model_cfg, num_classes)
  dummy = jnp.zeros((1, NATIVE_SIZE, NATIVE_SIZE, 3), jnp.float32)
  variables = jax.jit(lambda rng: model.init({"params": rng, "dropout": rng}, dummy, train=False))(
      jax.random.key(0))
  row = {
      "model": model_cfg.name,
      "params": int(sum(x.size for x in jax.tree.leaves(variables["params"]))),
      "input_size": NATIVE_SIZE,
      "dtype": dtypes.resolve_dtype(model_cfg.dtype),
  }
  row.update(measure_forward(model_forward(model, normalize_cfg, NATIVE_SIZE), variables,
                             batch_sizes=batch_sizes, min_seconds=min_seconds))
  counted = model.counted_form()
  if counted is not model:  # speed as it runs here, FLOPs in the backend-independent form
    b = max(int(b) for b in batch_sizes)
    images = jnp.zeros((b, NATIVE_SIZE, NATIVE_SIZE, 3), jnp.uint8)
    forward = jax.jit(model_forward(counted, normalize_cfg, NATIVE_SIZE))
    compiled = forward.lower(variables, images).compile()
    row["gflops_per_image"] = xla_flops(compiled) / b / 1e9
  return row


def markdown_table(rows: Sequence[dict], source: str = "") -> str:
  """The cost table of `rows`; `source`: the file they were read from (then the table is a
  function of that file alone, and names the host the rows were measured on)."""
  sizes = sorted({b for r in rows for b in r["images_per_sec"]}, key=int)
  head = ["model", "parameters", "input", "GFLOPs/image"] + [f"images/s @{b}" for b in sizes]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    cells = [r["model"], f"{r['params'] / 1e6:.2f} M", f"{r['input_size']}x{r['input_size']}",
             f"{r['gflops_per_image']:.3f}"]
    cells += [f"{r['images_per_sec'][b]:.0f}" if b in r["images_per_sec"] else "" for b in sizes]
    lines.append("| " + " | ".join(cells) + " |")
  device = rows[0]["device"] if rows else "?"
  if source:
    hosts = sorted({str(r.get("host", "?")) for r in rows})
    return "\n".join(lines) + f"\n\nDevice: {device}, {', '.join(hosts)} (the rows of {source}).\n"
  return "\n".join(lines) + f"\n\nDevice: {device} ({jax.device_count()} device(s)).\n"


def read_rows(path: str) -> list:
  """Cost rows as `--output` wrote them (a JSON list), or a clear error."""
  try:
    with open(path) as f:
      rows = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ValueError(f"--rows={path!r} is not a readable JSON file of cost rows ({e}); pass a "
                     "file written by --output") from None
  need = ("model", "params", "input_size", "gflops_per_image", "images_per_sec", "device")
  if not isinstance(rows, list) or not rows or any(
      not isinstance(r, dict) or any(k not in r for k in need) for r in rows):
    raise ValueError(f"--rows={path!r} must be a non-empty JSON list of cost rows with keys "
                     f"{need}, as --output writes them")
  return rows


MODEL_CONFIGS = ("customvit", "resnet18", "resnet50", "densenet121", "efficientnet_b0",
                 "convnext_tiny", "vit_small", "swin_tiny")


BLOCK_START, BLOCK_END = "<!-- cost table: start -->", "<!-- cost table: end -->"


def replace_block(path: str, text: str, markers=(BLOCK_START, BLOCK_END)):
  """Replaces what stands between the cost-table markers in `path` (atomically)."""
  begin_marker, end_marker = markers
  with open(path) as f:
    content = f.read()
  start, end = content.find(begin_marker), content.find(end_marker)
  if start < 0 or end < start:
    raise ValueError(f"{path} has no '{begin_marker}' ... '{end_marker}' block to replace; add "
                     "the two marker lines where the table should go")
  atomic_files.write_text(path, content[:start + len(begin_marker)] + "\n" + text + content[end:])


def write_outputs(rows: Sequence[dict], table: str, *, program: str, output: str = "",
                  markdown: str = "", update: str = "", markers=(BLOCK_START, BLOCK_END)):
  """Prints the table; writes the rows as JSON, the table as Markdown and the table into the
  `markers` block of `update` (with the command that made it), each atomically."""
  print("\n" + table)
  if output:
    atomic_files.write_text(output, json.dumps(list(rows), indent=1))
  if markdown:
    atomic_files.write_text(markdown, table)
  if update:
    command = f"python -m {program} " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--update"))
    replace_block(update, f"{table}Made by `{command.strip()}` on {time.strftime('%Y-%m-%d')}.\n",
                  markers)


def main(argv):
  del argv
  f = flags.FLAGS
  if f.rows:
    try:
      rows = read_rows(f.rows)
    except ValueError as e:
      raise SystemExit(f"error: {e}") from None
    write_outputs(rows, markdown_table(rows, source=f.rows), program="cellvit_jax.experiments.cost",
                  markdown=f.markdown, update=f.update)
    return
  specs = f.configs or [os.path.join("configs", f"{n}.py") for n in MODEL_CONFIGS]
  rows = []
  for spec in specs:
    if not os.path.isfile(spec.partition(":")[0]):
      raise SystemExit(f"error: config file {spec!r} not found "
                       "(--configs takes configs/*.py paths)")
    config = config_files.load(spec)
    row = config_cost(config.model, config.normalize,
                      batch_sizes=[int(b) for b in f.batch_sizes], min_seconds=f.min_seconds)
    print(json.dumps(row), flush=True)
    rows.append(row)
  write_outputs(rows, markdown_table(rows), program="cellvit_jax.experiments.cost",
                output=f.output, markdown=f.markdown, update=f.update)


if __name__ == "__main__":
  # Flags only when run as a program: study and fm_cost import this module, and absl flags
  # are process-wide.
  flags.DEFINE_list("configs", [], "Config files (default: the eight model configs).")
  flags.DEFINE_string("rows", "", "Tabulate these stored cost rows (an --output file) instead "
                      "of measuring.")
  flags.DEFINE_list("batch_sizes", ["1", "256"], "Batch sizes to time.")
  flags.DEFINE_float("min_seconds", 2.0, "Minimum timed seconds per batch size.")
  flags.DEFINE_string("output", "", "Write the rows as JSON here.")
  flags.DEFINE_string("markdown", "", "Write the Markdown table here.")
  flags.DEFINE_string("update", "",
                      "Rewrite the cost-table block of this Markdown file (docs/models.md).")
  app.run(main)
