"""The PyTorch baselines of benchmarks/train_step.py are the same architectures as the Flax models.

Same parameter count at the default (benchmarked) fields; and, with the Flax parameters
copied in, the same eval-mode logits on random input (small widths keep this fast).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_ref  # noqa: E402
from cellvit_jax.config import files as config_files  # noqa: E402
from cellvit_jax import models  # noqa: E402
from conftest import REPO  # noqa: E402


def _flax_params(model, size=40):
  init = lambda r: model.init({"params": r, "dropout": r}, jnp.zeros((1, size, size, 3)),
                              train=False)
  variables = jax.jit(init)(jax.random.key(0))
  return variables, sum(x.size for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("name", ["customvit", "resnet18", "vit_small", "resnet50"])
def test_parameter_count_matches_flax(name):
  _, flax_count = _flax_params(models.build(name, 4))
  torch_model = torch_ref.build(name, 4)
  assert sum(p.numel() for p in torch_model.parameters()) == flax_count


@pytest.mark.parametrize("name", ["customvit", "resnet18", "vit_small", "resnet50"])
def test_builds_from_the_shipped_config(name):
  """The benchmark builds the port with configs/<name>.py's model kwargs."""
  config = config_files.load(os.path.join(REPO, "configs", f"{name}.py"))
  _, flax_count = _flax_params(models.build(name, 4, **config.model.kwargs))
  torch_model = torch_ref.build(name, 4, **config.model.kwargs)
  assert sum(p.numel() for p in torch_model.parameters()) == flax_count


@pytest.mark.parametrize("name,kwargs", [
    ("customvit", dict(dim=32, depth=2, num_heads=2)),
    ("customvit", dict(dim=32, depth=2, num_heads=2, tokenizer="patch")),
    ("customvit", dict(dim=32, depth=2, num_heads=2, stem_full_res=False)),
    ("customvit", dict(dim=32, depth=2, num_heads=2, patch_size=4, stem_blocks=2)),
    ("customvit", dict(dim=32, depth=1, num_heads=2, patch_size=8, stem_blocks=1,
                       stem_blocks_from=2)),
    ("vit_small", dict(dim=32, depth=2, num_heads=2)),
    ("resnet18", dict(width=8)),
])
def test_forward_matches_flax_with_copied_params(name, kwargs):
  model = models.build(name, 4, **kwargs)
  variables, _ = _flax_params(model)
  # Non-zero head and random-ish norms, so the comparison sees every layer.
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda a: jnp.asarray(rng.normal(0, 0.5, a.shape), a.dtype)
                           if a.ndim >= 1 else a, variables)
  if "batch_stats" in variables:
    variables["batch_stats"] = jax.tree.map(jnp.abs, variables["batch_stats"])
  x = rng.normal(size=(2, 40, 40, 3)).astype(np.float32)
  want = np.asarray(model.apply(variables, x, train=False))
  torch_model = torch_ref.build(name, 4, **kwargs).eval()
  torch_ref.load_flax(name, torch_model, variables)
  with torch.no_grad():
    got = torch_model(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)
