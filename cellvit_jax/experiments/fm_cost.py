"""Inference cost of the FM presets at their published size, from the architecture alone.

    python -m cellvit_jax.experiments.fm_cost                          # all eight presets
    python -m cellvit_jax.experiments.fm_cost --presets=phikon,uni --measure_below=0
    python -m cellvit_jax.experiments.fm_cost --update=docs/foundation_models.md  # its table

No weights are needed: each preset's `arch` (the published config, models/fm/presets.py)
builds the real-size FoundationModel, its parameters are counted with jax.eval_shape
(abstract shapes, nothing allocated) and its GFLOPs per image come from XLA's cost
analysis of the compiled uint8 40x40 -> resize -> normalise -> backbone -> 4-class head
function, lowered on those abstract shapes.  Images/s needs real arrays and a run: it is
measured (random weights, batch 1, this device) only for models under --measure_below
parameters; the others say "not measured" rather than guess.
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cellvit_jax.experiments import cost
from cellvit_jax.models.fm import foundation, lora
from cellvit_jax.models.fm import presets as fm_presets
from cellvit_jax.models.fm import weights as fm_weights

FAMILY = {"vit": "vit", "dinov2": "dinov2", "dinov2_with_registers": "dinov2_registers",
          "clip_vision_model": "clip"}
BLOCK = ("<!-- fm cost table: start -->", "<!-- fm cost table: end -->")


def preset_model(name: str, num_classes: int = 4) -> foundation.FoundationModel:
  """The preset's FoundationModel at its published size (no weights read)."""
  preset = fm_presets.get(name)
  arch = dict(preset.arch)
  family = FAMILY[arch["model_type"]]
  config = fm_weights.hf_config(family, arch)
  return foundation.FoundationModel(
      family=family, hf_config=config, num_classes=num_classes,
      input_size=preset.input_size or int(config.image_size), mean=tuple(preset.mean),
      std=tuple(preset.std), feature=preset.feature, resize_method=preset.resize)


def lora_trainable_params(name: str, rank: int = 8, targets: str = "all",
                          num_classes: int = 4) -> int:
  """Parameters LoRA fine-tuning trains (adapters r x (in + out) per targeted block kernel,
  and the head) at the preset's published size: config.finetune.method='lora'."""
  abstract = jax.eval_shape(lambda: preset_model(name, num_classes).init(
      jax.random.key(0), jnp.zeros((1, cost.NATIVE_SIZE, cost.NATIVE_SIZE, 3))))["params"]
  kernels = lora.select_targets(abstract["backbone"], targets)
  adapters = sum(rank * sum(lora._get(abstract["backbone"], k).shape) for k in kernels)
  return int(adapters + sum(np.prod(x.shape) for x in jax.tree.leaves(abstract["head"])))


def _forward(model):
  def forward(variables, images):
    return model.apply(variables, images.astype(jnp.float32) / 255.0).astype(jnp.float32)
  return forward


def preset_cost(name: str, *, measure_below: float = 4e8, min_seconds: float = 1.0) -> dict:
  model = preset_model(name)
  images = jax.ShapeDtypeStruct((1, cost.NATIVE_SIZE, cost.NATIVE_SIZE, 3), jnp.uint8)
  init = lambda: model.init(jax.random.key(0),
                            jnp.zeros((1, cost.NATIVE_SIZE, cost.NATIVE_SIZE, 3)))
  abstract = jax.eval_shape(init)
  params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract["params"])))
  compiled = jax.jit(_forward(model)).lower(abstract, images).compile()
  row = {"model": name, "hub_id": fm_presets.get(name).hub_id,
         "published": fm_presets.get(name).published.split(" (")[0],
         "params": params, "lora_r8_trainable_params": lora_trainable_params(name),
         "input_size": model.input_size,
         "gflops_per_image": cost.xla_flops(compiled) / 1e9, "images_per_sec": {},
         "device": jax.devices()[0].device_kind}
  if params < measure_below:
    variables = jax.jit(init)()
    measured = cost.measure_forward(_forward(model), variables, batch_sizes=(1,),
                                    min_seconds=min_seconds)
    row["images_per_sec"] = measured["images_per_sec"]
  return row


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next((line.split(":", 1)[1].strip() for line in f
                   if line.startswith("model name")), "")
  except OSError:
    return ""


def markdown_table(rows) -> str:
  head = ["preset", "hub id", "architecture", "parameters", "input", "GFLOPs/image",
          "images/s @1"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in rows:
    speed = r["images_per_sec"].get("1")
    lines.append("| " + " | ".join([
        f"`{r['model']}`", r.get("hub_id", ""), r["published"], f"{r['params'] / 1e6:.1f} M",
        f"{r['input_size']}x{r['input_size']}", f"{r['gflops_per_image']:.1f}",
        f"{speed:.2f}" if speed else "not measured"]) + " |")
  device = rows[0]["device"] if rows else "?"
  cpu = f", {cpu_model()}, {os.cpu_count()} cores" if device == "cpu" and cpu_model() else ""
  return "\n".join(lines) + f"\n\nDevice: {device}{cpu}.\n"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; flags only (--presets, ...)")
  f = flags.FLAGS
  names = list(fm_presets.PRESETS) if f.presets == "all" else f.presets.split(",")
  try:
    for n in names:
      fm_presets.get(n)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  rows = []
  for n in names:
    rows.append(preset_cost(n, measure_below=f.measure_below, min_seconds=f.min_seconds))
    print(json.dumps(rows[-1]), flush=True)
  cost.write_outputs(rows, markdown_table(rows), program="cellvit_jax.experiments.fm_cost",
                     output=f.output, update=f.update, markers=BLOCK)


if __name__ == "__main__":
  # Flags only when run as a program (absl flags are process-wide; tests import this module).
  flags.DEFINE_string("presets", "all", "Comma list of presets, or 'all'.")
  flags.DEFINE_float("measure_below", 4e8, "Time images/s only for models with fewer "
                     "parameters (0: none).")
  flags.DEFINE_float("min_seconds", 1.0, "Minimum timed seconds.")
  flags.DEFINE_string("output", "", "Write the rows as JSON here.")
  flags.DEFINE_string("update", "", "Rewrite the fm cost-table block of this Markdown file.")
  app.run(main)
