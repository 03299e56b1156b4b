"""FM presets at their published size, built from the architecture alone: parameter counts
against the model cards, GFLOPs from XLA on abstract shapes, and the table in
docs/foundation_models.md."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cellvit_jax.experiments import fm_cost
from cellvit_jax.models.fm import presets as fm_presets
from conftest import REPO

# Published sizes (model cards / papers), millions of parameters of the image encoder.
PUBLISHED_M = {"phikon": 86, "plip": 88, "uni": 303, "phikon2": 303, "uni2": 681,
               "virchow2": 632, "hoptimus0": 1134, "gigapath": 1134}


@pytest.mark.parametrize("name", sorted(PUBLISHED_M))
def test_real_size_parameter_count_matches_the_card(name):
  model = fm_cost.preset_model(name)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 40, 40, 3))))
  backbone = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract["params"]["backbone"]))
  assert abs(backbone / 1e6 - PUBLISHED_M[name]) / PUBLISHED_M[name] < 0.01, backbone
  assert model.input_size == 224


def test_gflops_from_abstract_shapes_and_markdown():
  row = fm_cost.preset_cost("plip", measure_below=0)
  # CLIP ViT-B/32 at 224: 50 tokens, ~4.4 GMACs -> ~8.8 GFLOPs (XLA counts 2 per MAC).
  assert 8.0 < row["gflops_per_image"] < 9.5 and row["images_per_sec"] == {}
  table = fm_cost.markdown_table([row])
  assert "| `plip` |" in table and "not measured" in table


def test_the_docs_list_all_eight_presets_in_the_fm_cost_table():
  with open(os.path.join(REPO, "docs", "foundation_models.md")) as f:
    text = f.read()
  block = text[text.index(fm_cost.BLOCK[0]):text.index(fm_cost.BLOCK[1])]
  for name in fm_presets.names():
    assert f"| `{name}` |" in block, name
