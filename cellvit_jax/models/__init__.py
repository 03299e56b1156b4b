"""Model registry: config name -> Flax Linen module class.

Every registered module is constructed as `cls(num_classes=..., dtype=..., **config.model.kwargs)`
and called as `module.apply(variables, images, train=bool)` on float NHWC images that the
train step has already normalised. Entries are import paths so that importing the registry
does not import every model.

The pathology foundation models are not registry entries: their architecture comes from a
weights directory (config.fm.*), so `from_config` builds them from the whole config
(models/fm/foundation.py); importing this file never imports transformers.
"""
import dataclasses
import importlib

from cellvit_jax.models import dtypes
from cellvit_jax.models.fm import foundation, lora
from cellvit_jax.models.fm import presets as fm_presets

_REGISTRY = {
    "customvit": ("cellvit_jax.models.customvit", "CustomViT"),
    "resnet18": ("cellvit_jax.models.resnet", "ResNet18"),
    "resnet50": ("cellvit_jax.models.resnet", "ResNet50"),
    "densenet121": ("cellvit_jax.models.densenet", "DenseNet121"),
    "efficientnet_b0": ("cellvit_jax.models.efficientnet", "EfficientNetB0"),
    "convnext_tiny": ("cellvit_jax.models.convnext", "ConvNeXtTiny"),
    "vit_small": ("cellvit_jax.models.vit", "ViTSmall"),
    "swin_tiny": ("cellvit_jax.models.swin", "SwinTiny"),
}


def names():
  return sorted(_REGISTRY)


def get_class(name: str):
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; valid choices: {', '.join(names())}")
  module, attr = _REGISTRY[name]
  return getattr(importlib.import_module(module), attr)


def build(name: str, num_classes: int, dtype=None, **kwargs):
  """Instantiates a registered model; unknown kwargs are named in the error, with the valid ones."""
  cls = get_class(name)
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "num_classes"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f"model {name!r} has no option(s) {unknown}; valid options: {sorted(fields)}")
  if dtype is not None and "dtype" in fields:
    kwargs["dtype"] = dtype
  return cls(num_classes=num_classes, **kwargs)


def from_config(model_cfg, fm_cfg, num_classes: int, finetune_cfg=None):
  """The model of config.model and config.fm (None when the config has no fm section): a
  foundation model when fm_cfg.preset is set (with LoRA adapters when config.finetune, passed
  by the training modes, says method='lora'), else the registry entry model_cfg.name with
  model_cfg.kwargs."""
  is_lora = finetune_cfg is not None and finetune_cfg.method != "full"
  if fm_presets.is_foundation(fm_cfg):
    if is_lora:
      return lora.build(fm_cfg, finetune_cfg, num_classes, model_cfg.dtype)
    return foundation.build(fm_cfg, num_classes, model_cfg.dtype)
  if is_lora:
    raise ValueError(f"config.finetune.method={finetune_cfg.method!r} adapts a foundation model; "
                     "set config.fm.preset (configs/fm.py:<preset>,finetune) or use method='full'")
  return build(model_cfg.name, num_classes, dtype=dtypes.compute_dtype(model_cfg.dtype),
               **model_cfg.kwargs)


def with_pretrained(fm_cfg, model, state, mesh):
  """A freshly initialised state with its pretrained part loaded (FMs); others unchanged."""
  if not fm_presets.is_foundation(fm_cfg) or lora.is_lora(model):
    return state  # LoRA: the base came with the state, the adapters start at B = 0
  return foundation.with_pretrained(fm_cfg, model, state, mesh)
