"""Foundation models as one Flax Linen module: resize -> normalise -> backbone -> feature -> head.

The backbone is the `.module` Linen class of a transformers Flax port (FlaxViTModule,
FlaxDinov2Module, FlaxCLIPVisionModule) or, for register-token ViTs, our own
models/fm/dinov2_registers.py (transformers has no Flax port of it), a child of our module, so
backbone and head are one params pytree that jit, optax and orbax treat like any other model's.
The model takes float [0, 1] NHWC patches at their native size (40x40): the resize to the FM's
input size and the preset's normalisation happen here, inside the jitted step, and nowhere else
(the model says so through `normalizes_input`, so the step skips its own).  The ports'
public wrappers (FlaxViTModel & co.) take NCHW and transpose to NHWC before calling these
modules; we call the modules, so images stay NHWC end to end: that transpose is the one place
HF's NCHW convention is handled, and we skip it.

Tiny random checkpoints in the published formats (tests, trying the pipeline offline) are
written by models/fm/tiny.py.
"""
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cellvit_jax import parallel
from cellvit_jax.models import dtypes, interface
from cellvit_jax.models.fm import dinov2_registers
from cellvit_jax.models.fm import presets as fm_presets
from cellvit_jax.models.fm import weights as fm_weights
from cellvit_jax.ops import resize


def backbone_class(family: str):
  """The transformers Flax Linen module of a family (imports transformers on first use)."""
  if family == "vit":
    from transformers.models.vit.modeling_flax_vit import FlaxViTModule
    return lambda hf_config, dtype, name: FlaxViTModule(hf_config, dtype=dtype,
                                                        add_pooling_layer=False, name=name)
  if family == "dinov2":
    from transformers.models.dinov2.modeling_flax_dinov2 import FlaxDinov2Module
    return lambda hf_config, dtype, name: FlaxDinov2Module(hf_config, dtype=dtype, name=name)
  if family == "clip":
    from transformers.models.clip.modeling_flax_clip import FlaxCLIPVisionModule
    return lambda hf_config, dtype, name: FlaxCLIPVisionModule(hf_config, dtype=dtype, name=name)
  if family == "dinov2_registers":
    return lambda hf_config, dtype, name: dinov2_registers.Dinov2WithRegisters(
        hf_config, dtype=dtype, name=name)
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


def checkpoint_of(fm_cfg) -> fm_weights.Checkpoint:
  """The checkpoint config.fm.weights holds, read and checked against config.fm.preset."""
  preset = fm_presets.get(fm_cfg.preset)
  return fm_weights.inspect(fm_cfg.weights, preset, int(fm_cfg.get("num_heads", 0) or 0))


def input_size_of(fm_cfg, ckpt) -> int:
  """config.fm.input_size (0: the checkpoint's own image size), checked against the patch."""
  preset = fm_presets.get(fm_cfg.preset)
  size = int(fm_cfg.input_size) or preset.input_size or ckpt.image_size
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


def build(fm_cfg, num_classes: int, dtype: str = "auto") -> FoundationModel:
  """The FM of config.fm with a `num_classes` head, computing in `dtype` (config.model.dtype)."""
  preset = fm_presets.get(fm_cfg.preset)
  ckpt = checkpoint_of(fm_cfg)
  feature = fm_cfg.feature or preset.feature
  method = fm_cfg.resize_method or preset.resize
  if feature not in fm_presets.FEATURES:
    raise ValueError(f"config.fm.feature={feature!r}; valid: {', '.join(fm_presets.FEATURES)}")
  if method not in fm_presets.RESIZE_METHODS:
    raise ValueError(f"config.fm.resize_method={method!r}; valid: "
                     f"{', '.join(fm_presets.RESIZE_METHODS)}")
  decay = float(fm_cfg.layer_decay)
  if not 0.0 < decay <= 1.0:
    raise ValueError(f"config.fm.layer_decay={decay} must be in (0, 1]; 1 disables layer-wise "
                     "decay, 0.75 is a usual ViT fine-tuning value")
  return FoundationModel(family=ckpt.family, hf_config=ckpt.hf_config, num_classes=num_classes,
                         input_size=input_size_of(fm_cfg, ckpt), mean=tuple(preset.mean),
                         std=tuple(preset.std), feature=feature, resize_method=method,
                         layer_decay=decay, dtype=dtypes.compute_dtype(dtype))


def backbone_abstract(model: FoundationModel) -> dict:
  """Shapes of the backbone's params, without allocating them."""
  dummy = jnp.zeros((1, model.input_size, model.input_size, 3), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), dummy))["params"]["backbone"]


def pretrained_backbone(fm_cfg, model: FoundationModel) -> dict:
  """The backbone params read from config.fm.weights (numpy), checked against the model."""
  return fm_weights.load_params(checkpoint_of(fm_cfg), backbone_abstract(model))


def with_pretrained(fm_cfg, model, state, mesh):
  """`state` with its backbone params replaced by the published weights (replicated)."""
  params = dict(state.params)
  params["backbone"] = pretrained_backbone(fm_cfg, model)
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
