"""Foundation models as one Flax Linen module: resize -> normalise -> backbone -> feature -> head.

The backbone is the `.module` Linen class of a transformers Flax port (FlaxViTModule,
FlaxDinov2Module, FlaxCLIPVisionModule) or, for register-token ViTs, our own
models/dinov2_registers.py (transformers has no Flax port of it), a child of our module, so backbone and head are
one params pytree that jit, optax and orbax treat like any other model's.  The model takes
float [0, 1] NHWC patches at their native size (40x40): the resize to the FM's input size
and the preset's normalisation happen here, inside the jitted step, and nowhere else
(steps.py skips its own normalisation for FM configs).  The ports' public wrappers
(FlaxViTModel & co.) take NCHW and transpose to NHWC before calling these modules; we call
the modules, so images stay NHWC end to end: that transpose is the one place HF's NCHW
convention is handled, and we skip it.

    python -m cellvit_jax.models.foundation --tiny=phikon --output=DIR

writes a small random checkpoint of a preset's family in its published format (config.json
+ model.safetensors; a timm state dict of the preset's layout for uni, uni2, virchow2,
hoptimus0 and gigapath), for tests and for trying the pipeline without downloading weights.
"""
import os
import re
import sys
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cellvit_jax import parallel
from cellvit_jax.models import dinov2_registers, dtypes, fm_presets, fm_weights, interface
from cellvit_jax.ops import resize


def backbone_class(family: str):
  """The transformers Flax Linen module of a family (imports transformers on first use)."""
  if family == "vit":
    from transformers.models.vit.modeling_flax_vit import FlaxViTModule
    return lambda config, dtype, name: FlaxViTModule(config, dtype=dtype, add_pooling_layer=False,
                                                     name=name)
  if family == "dinov2":
    from transformers.models.dinov2.modeling_flax_dinov2 import FlaxDinov2Module
    return lambda config, dtype, name: FlaxDinov2Module(config, dtype=dtype, name=name)
  if family == "clip":
    from transformers.models.clip.modeling_flax_clip import FlaxCLIPVisionModule
    return lambda config, dtype, name: FlaxCLIPVisionModule(config, dtype=dtype, name=name)
  if family == "dinov2_registers":
    return lambda config, dtype, name: dinov2_registers.Dinov2WithRegisters(config, dtype=dtype,
                                                                            name=name)
  raise ValueError(f"unknown FM family {family!r}; valid: vit, dinov2, dinov2_registers, clip")


class FoundationModel(interface.Model):
  """An FM with a linear head; num_classes=0 returns the features instead of logits.

  Its training interface (models/interface.py): it resizes and normalises its own input,
  decays neither tokens nor position tables (as their pre-training did), and fine-tunes
  with layer-wise lr decay (config.fm.layer_decay: deeper blocks learn faster).
  """
  family: str
  hf_config: Any
  num_classes: int
  input_size: int
  mean: tuple
  std: tuple
  feature: str = "cls"
  resize_method: str = "bilinear"
  layer_decay: float = 1.0
  dtype: Any = jnp.float32

  normalizes_input = True
  layerwise_lr = True

  def weight_decay_mask(self, params):
    return weight_decay_mask(params)

  def lr_scales(self, params):
    return layer_decay_scales(params, int(self.hf_config.num_hidden_layers), self.layer_decay)

  @nn.compact
  def __call__(self, images01, train: bool = False):
    x = resize.square(images01.astype(jnp.float32), self.input_size, self.resize_method)
    x = (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)
    backbone = backbone_class(self.family)(self.hf_config, self.dtype, "backbone")
    out = backbone(x.astype(self.dtype), deterministic=not train)
    tokens = out.last_hidden_state
    if self.family == "clip":
      # CLIP's encoder output is not normalised; its pooled class token goes through
      # post_layernorm, and patch tokens get the same norm for the 'cls_mean' feature.
      cls = out.pooler_output
      patches = backbone.vision_model.post_layernorm(tokens[:, 1:])
    else:  # ViT and Dinov2 apply the final norm to every token; registers follow the class
      registers = int(getattr(self.hf_config, "num_register_tokens", 0) or 0)
      cls, patches = tokens[:, 0], tokens[:, 1 + registers:]
    feats = cls if self.feature == "cls" else jnp.concatenate([cls, patches.mean(axis=1)], -1)
    feats = feats.astype(jnp.float32)
    if self.num_classes == 0:
      return feats
    # A zero-initialised head: fine-tuning starts from the features, not a random projection.
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head",
                    dtype=self.dtype)(feats).astype(jnp.float32)


def checkpoint_of(config) -> fm_weights.Checkpoint:
  preset = fm_presets.get(config.fm.preset)
  return fm_weights.inspect(config.fm.weights, preset, int(config.fm.get("num_heads", 0) or 0))


def input_size_of(config, ckpt) -> int:
  """config.fm.input_size (0: the checkpoint's own image size), checked against the patch."""
  preset = fm_presets.get(config.fm.preset)
  size = int(config.fm.input_size) or preset.input_size or ckpt.image_size
  if size % ckpt.patch_size:
    lower = max(ckpt.patch_size, size // ckpt.patch_size * ckpt.patch_size)
    raise ValueError(f"config.fm.input_size={size} is not a multiple of the checkpoint's patch "
                     f"size {ckpt.patch_size} ({ckpt.directory}); use {lower} or "
                     f"{lower + ckpt.patch_size}")
  if size != ckpt.image_size and ckpt.family not in ("dinov2", "dinov2_registers"):
    raise ValueError(f"config.fm.input_size={size} differs from the checkpoint's image size "
                     f"{ckpt.image_size} ({ckpt.directory}), and the {ckpt.family} port cannot "
                     f"interpolate its position embeddings; use {ckpt.image_size} (or 0)")
  return size


def build(config, num_classes: int) -> FoundationModel:
  """The FM of `config` (config.fm.*, config.model.dtype) with a `num_classes` head."""
  preset = fm_presets.get(config.fm.preset)
  ckpt = checkpoint_of(config)
  feature = config.fm.feature or preset.feature
  method = config.fm.resize_method or preset.resize
  if feature not in fm_presets.FEATURES:
    raise ValueError(f"config.fm.feature={feature!r}; valid: {', '.join(fm_presets.FEATURES)}")
  if method not in fm_presets.RESIZE_METHODS:
    raise ValueError(f"config.fm.resize_method={method!r}; valid: "
                     f"{', '.join(fm_presets.RESIZE_METHODS)}")
  decay = float(config.fm.layer_decay)
  if not 0.0 < decay <= 1.0:
    raise ValueError(f"config.fm.layer_decay={decay} must be in (0, 1]; 1 disables layer-wise "
                     "decay, 0.75 is a usual ViT fine-tuning value")
  return FoundationModel(family=ckpt.family, hf_config=ckpt.hf_config, num_classes=num_classes,
                         input_size=input_size_of(config, ckpt), mean=tuple(preset.mean),
                         std=tuple(preset.std), feature=feature, resize_method=method,
                         layer_decay=decay, dtype=dtypes.compute_dtype(config.model.dtype))


def backbone_abstract(model: FoundationModel) -> dict:
  """Shapes of the backbone's params, without allocating them."""
  dummy = jnp.zeros((1, model.input_size, model.input_size, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), dummy))["params"]["backbone"]


def pretrained_backbone(config, model: FoundationModel) -> dict:
  """The backbone params read from config.fm.weights (numpy), checked against the model."""
  return fm_weights.load_params(checkpoint_of(config), backbone_abstract(model))


def with_pretrained(config, model, state, mesh):
  """`state` with its backbone params replaced by the published weights (replicated)."""
  params = dict(state.params)
  params["backbone"] = pretrained_backbone(config, model)
  return state.replace(params=parallel.replicate(params, mesh))


def layer_index(path: tuple, num_layers: int) -> int:
  """Depth of a parameter for layer-wise lr decay: 0 embeddings, i+1 block i, L+1 the rest."""
  names = [str(getattr(p, "key", p)) for p in path]
  joined = "/".join(names)
  if "embeddings" in joined or "pre_layrnorm" in joined:
    return 0
  m = re.search(r"/layers?/(\d+)/", joined)
  return int(m.group(1)) + 1 if m else num_layers + 1


def layer_decay_scales(params, num_layers: int, decay: float):
  """Per-parameter lr factors decay ** (L + 1 - depth): the head trains at the full lr."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: decay ** (num_layers + 1 - layer_index(path, num_layers)), params)


_NO_DECAY = ("cls_token", "position_embeddings", "class_embedding", "position_embedding",
             "mask_token", "register_tokens")


def weight_decay_mask(params):
  """AdamW decay on matrices and kernels, not on norms, biases, LayerScale, tokens or positions."""
  def decays(path, p):
    names = {str(getattr(k, "key", k)) for k in path}
    return p.ndim > 1 and not names & set(_NO_DECAY)
  return jax.tree_util.tree_map_with_path(decays, params)


# --- tiny random checkpoints in the published formats ----------------------------------------

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
  import transformers
  preset = fm_presets.get(preset_name)
  if image_size % patch_size:
    raise ValueError(f"--image_size={image_size} is not a multiple of --patch_size={patch_size}")
  os.makedirs(output, exist_ok=True)
  from cellvit_jax.models import convert
  if preset.tiny.get("format") == "timm":  # UNI & co. ship a timm state dict: write one
    config, state = tiny_timm_state(preset.tiny, hidden=hidden, depth=depth, heads=heads,
                                    image_size=image_size, patch_size=patch_size, seed=seed)
    convert.write_hf_dir(output, config, state)
    return output
  common = dict(hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads,
                intermediate_size=4 * hidden, image_size=image_size, patch_size=patch_size)
  if preset.family == "vit":
    vision = transformers.ViTConfig(**common, architectures=["ViTModel"])
    saved = vision.to_dict()
  elif preset.family == "dinov2":  # phikon-v2: a transformers Dinov2Model
    vision = transformers.Dinov2Config(**{k: v for k, v in common.items() if k != "intermediate_size"},
                                       mlp_ratio=4, layerscale_value=1.0, use_mask_token=False,
                                       architectures=["Dinov2Model"])
    saved = {**vision.to_dict(), "layerscale_value": 1e-5}  # as phikon-v2's config.json
  else:
    text = dict(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=heads,
                intermediate_size=2 * hidden, vocab_size=64, max_position_embeddings=16)
    full = transformers.CLIPConfig(vision_config=common, text_config=text, projection_dim=hidden,
                                   architectures=["CLIPModel"])
    vision, saved = full.vision_config, full.to_dict()
  saved.pop("use_mask_token", None)
  module = backbone_class(preset.family)(vision, jnp.float32, None)
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  params = _perturbed(module.init(jax.random.key(seed), dummy)["params"], seed)
  # Flax names -> PyTorch names; CLIP's vision tower is already under 'vision_model', as in
  # a CLIPModel state dict.
  tensors = fm_weights.to_pytorch_names(params)
  if preset.family == "clip":  # the rest of a CLIPModel's image side
    rng = np.random.default_rng(seed + 1)
    tensors["visual_projection.weight"] = (0.05 * rng.standard_normal((hidden, hidden))).astype(np.float32)
    tensors["logit_scale"] = np.asarray(2.6592, np.float32)
  convert.write_hf_dir(output, saved, tensors)
  return output


def main(argv=None):
  import argparse
  p = argparse.ArgumentParser(description="Writes a tiny random FM checkpoint.")
  p.add_argument("--tiny", required=True, choices=fm_presets.names())
  p.add_argument("--output", required=True)
  for flag, default in (("hidden", 32), ("depth", 2), ("heads", 2), ("image_size", 32),
                        ("patch_size", 16), ("seed", 0)):
    p.add_argument(f"--{flag}", type=int, default=default)
  a = p.parse_args(argv)
  try:
    write_tiny(a.tiny, a.output, hidden=a.hidden, depth=a.depth, heads=a.heads,
               image_size=a.image_size, patch_size=a.patch_size, seed=a.seed)
  except (ValueError, OSError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote a tiny random {a.tiny} checkpoint to {a.output}; use "
        f"--config.fm.weights={a.output}")


if __name__ == "__main__":
  main()
