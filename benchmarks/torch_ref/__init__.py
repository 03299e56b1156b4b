"""PyTorch ports of cellvit_jax models, the baselines of benchmarks/train_step.py.

Same layers, same order, same parameter counts as the Flax modules (tests/test_torch_ref.py
checks the counts and, after `load_flax`, the forward outputs). Layouts are PyTorch's
(NCHW, Linear weight (out, in)); `load_flax` converts a Flax variables tree.
"""
from benchmarks.torch_ref import resnet, vit

# registry name -> (builder(num_classes, **config kwargs), flax variables -> torch state loader)
_PORTS = {
    "customvit": (vit.CustomViT, vit.load_flax),
    "vit_small": (vit.ViTSmall, vit.load_flax),
    "resnet18": (resnet.ResNet18, resnet.load_flax),
    "resnet50": (resnet.ResNet50, resnet.load_flax),
}


def names():
  return sorted(_PORTS)


def build(name: str, num_classes: int, **kwargs):
  if name not in _PORTS:
    raise ValueError(f"no PyTorch port of {name!r}; ported: {', '.join(names())}")
  return _PORTS[name][0](num_classes=num_classes, **kwargs)


def load_flax(name: str, torch_model, variables) -> None:
  """Copies a Flax variables tree ({'params': ..., 'batch_stats': ...}) into `torch_model`."""
  _PORTS[name][1](torch_model, variables)
