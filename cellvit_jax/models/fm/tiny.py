"""Tiny random FM checkpoints in the published formats, for tests and offline trials.

    python -m cellvit_jax.models.fm.tiny --tiny=phikon --output=DIR

writes a small random checkpoint of a preset's family as its publisher ships it (config.json
+ model.safetensors; a timm state dict of the preset's layout for uni, uni2, virchow2,
hoptimus0 and gigapath), so the whole FM pipeline runs without downloading weights:
--config=configs/fm.py:phikon,probe --config.fm.weights=DIR.
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cellvit_jax.models.fm import convert, foundation
from cellvit_jax.models.fm import presets as fm_presets
from cellvit_jax.models.fm import weights as fm_weights

FLAGS = flags.FLAGS


def _perturbed(params, seed):
  """Random init plus noise on every leaf, so no bias is 0 and no norm is 1 (tests see all)."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [np.asarray(p, np.float32) + 0.05 * rng.standard_normal(p.shape)
                                   .astype(np.float32) for p in leaves])


def tiny_timm_state(layout: dict, *, hidden, depth, heads, image_size, patch_size, seed) -> tuple:
  """(timm hub config.json, state dict) of a random timm ViT in `layout` (a preset's `tiny`):
  register count, which tokens the position table covers, SwiGLUPacked or GELU MLP."""
  rng = np.random.default_rng(seed)
  n = lambda *s: (0.05 * rng.standard_normal(s)).astype(np.float32)
  one = lambda *s: (1 + n(*s)).astype(np.float32)
  registers, grid = int(layout.get("registers", 0)), (image_size // patch_size) ** 2
  prefix = {"none": 0, "class": 1, "class+registers": 1 + registers}[layout["pos_prefix"]]
  # SwiGLUPacked: fc1 makes 2 x the width fc2 reads (width 2 x hidden here, Dinov2 ratio 3).
  fc1, fc2_in = (4 * hidden, 2 * hidden) if layout["swiglu"] else (4 * hidden, 4 * hidden)
  state = {"cls_token": n(1, 1, hidden), "pos_embed": n(1, prefix + grid, hidden),
           "patch_embed.proj.weight": n(hidden, 3, patch_size, patch_size),
           "patch_embed.proj.bias": n(hidden), "norm.weight": one(hidden), "norm.bias": n(hidden)}
  if registers:
    state["reg_token"] = n(1, registers, hidden)
  for i in range(depth):
    b = f"blocks.{i}."
    state.update({b + "norm1.weight": one(hidden), b + "norm1.bias": n(hidden),
                  b + "attn.qkv.weight": n(3 * hidden, hidden), b + "attn.qkv.bias": n(3 * hidden),
                  b + "attn.proj.weight": n(hidden, hidden), b + "attn.proj.bias": n(hidden),
                  b + "ls1.gamma": one(hidden), b + "norm2.weight": one(hidden),
                  b + "norm2.bias": n(hidden), b + "mlp.fc1.weight": n(fc1, hidden),
                  b + "mlp.fc1.bias": n(fc1), b + "mlp.fc2.weight": n(hidden, fc2_in),
                  b + "mlp.fc2.bias": n(hidden), b + "ls2.gamma": one(hidden)})
  args = {"img_size": image_size, "patch_size": patch_size, "embed_dim": hidden, "depth": depth,
          "num_heads": heads, "init_values": 1e-5, "mlp_ratio": fc1 / hidden,
          "dynamic_img_size": True}
  if registers:
    args["reg_tokens"] = registers
  if layout["pos_prefix"] == "none":
    args["no_embed_class"] = True
  return {"architecture": layout["architecture"], "num_classes": 0, "model_args": args}, state


def write_tiny(preset_name: str, output: str, *, hidden=32, depth=2, heads=2, image_size=32,
               patch_size=16, seed=0) -> str:
  """A small random checkpoint of `preset_name`'s layout, as its publisher ships it."""
  preset = fm_presets.get(preset_name)
  if image_size % patch_size:
    raise ValueError(f"--image_size={image_size} is not a multiple of --patch_size={patch_size}")
  os.makedirs(output, exist_ok=True)
  if preset.tiny.get("format") == "timm":  # UNI & co. ship a timm state dict: write one
    config, state = tiny_timm_state(preset.tiny, hidden=hidden, depth=depth, heads=heads,
                                    image_size=image_size, patch_size=patch_size, seed=seed)
    convert.write_hf_dir(output, config, state)
    return output
  import transformers  # seconds to import; only the transformers formats need it
  common = dict(hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads,
                intermediate_size=4 * hidden, image_size=image_size, patch_size=patch_size)
  if preset.family == "vit":
    vision = transformers.ViTConfig(**common, architectures=["ViTModel"])
    saved = vision.to_dict()
  elif preset.family == "dinov2":  # phikon-v2: a transformers Dinov2Model
    dinov2_common = {k: v for k, v in common.items() if k != "intermediate_size"}
    vision = transformers.Dinov2Config(**dinov2_common, mlp_ratio=4, layerscale_value=1.0,
                                       use_mask_token=False, architectures=["Dinov2Model"])
    saved = {**vision.to_dict(), "layerscale_value": 1e-5}  # as phikon-v2's config.json
  else:
    text = dict(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=heads,
                intermediate_size=2 * hidden, vocab_size=64, max_position_embeddings=16)
    full = transformers.CLIPConfig(vision_config=common, text_config=text, projection_dim=hidden,
                                   architectures=["CLIPModel"])
    vision, saved = full.vision_config, full.to_dict()
  saved.pop("use_mask_token", None)
  module = foundation.backbone_class(preset.family)(vision, jnp.float32, None)
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  params = _perturbed(module.init(jax.random.key(seed), dummy)["params"], seed)
  # Flax names -> PyTorch names; CLIP's vision tower is already under 'vision_model', as in
  # a CLIPModel state dict.
  tensors = fm_weights.to_pytorch_names(params)
  if preset.family == "clip":  # the rest of a CLIPModel's image side
    rng = np.random.default_rng(seed + 1)
    tensors["visual_projection.weight"] = (
        0.05 * rng.standard_normal((hidden, hidden))).astype(np.float32)
    tensors["logit_scale"] = np.asarray(2.6592, np.float32)
  convert.write_hf_dir(output, saved, tensors)
  return output


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; flags only (--tiny, --output, ...)")
  try:
    write_tiny(FLAGS.tiny, FLAGS.output, hidden=FLAGS.hidden, depth=FLAGS.depth,
               heads=FLAGS.heads, image_size=FLAGS.image_size, patch_size=FLAGS.patch_size,
               seed=FLAGS.seed)
  except (ValueError, OSError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote a tiny random {FLAGS.tiny} checkpoint to {FLAGS.output}; use "
        f"--config.fm.weights={FLAGS.output}")


if __name__ == "__main__":
  flags.DEFINE_enum("tiny", None, fm_presets.names(), "The preset whose layout to write.")
  flags.DEFINE_string("output", None, "Folder to write config.json + model.safetensors to.")
  for _name, _default in (("hidden", 32), ("depth", 2), ("heads", 2), ("image_size", 32),
                          ("patch_size", 16), ("seed", 0)):
    flags.DEFINE_integer(_name, _default, f"Checkpoint {_name}.")
  flags.mark_flags_as_required(["tiny", "output"])
  app.run(main)
