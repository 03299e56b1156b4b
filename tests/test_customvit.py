import itertools

import jax
import jax.numpy as jnp
import pytest

from cellvit_jax import models
from cellvit_jax.models import customvit

# Default configs/customvit.py architecture, 4 classes (README model table).
CUSTOMVIT_PARAMS = 314_116


def _params(model):
  shapes = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, 40, 40, 3))))
  return sum(x.size for x in jax.tree.leaves(shapes["params"]))


def test_customvit_parameter_count():
  import importlib.util, os
  path = os.path.join(os.path.dirname(__file__), "..", "configs", "customvit.py")
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config()
  model = models.build("customvit", 4, **config.model.kwargs)
  assert _params(model) == CUSTOMVIT_PARAMS


SWITCHES = list(itertools.product(["patch", "conv"], [False, True], [False, True], ["learned", "sincos"], ["cls", "gap"]))


@pytest.mark.parametrize("tokenizer,spt,lsa,pos_emb,pool", SWITCHES)
def test_every_switch_builds_and_runs(tokenizer, spt, lsa, pos_emb, pool):
  model = models.build("customvit", 3, tokenizer=tokenizer, spt=spt, lsa=lsa, pos_emb=pos_emb,
                       pool=pool, dim=16, depth=1, num_heads=2, drop_path=0.1)
  x = jax.random.uniform(jax.random.key(1), (2, 40, 40, 3))
  variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
  y_train = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
  y_eval = model.apply(variables, x, train=False)
  assert y_train.shape == y_eval.shape == (2, 3)
  assert jnp.all(jnp.isfinite(y_train))


def test_eval_mode_is_deterministic():
  model = models.build("customvit", 4, dim=16, depth=2, num_heads=2, drop_path=0.5, dropout=0.3)
  x = jax.random.uniform(jax.random.key(1), (2, 40, 40, 3))
  variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
  # The head starts at zero; give it random weights so outputs depend on the features.
  head = variables["params"]["head"]
  head["kernel"] = jax.random.normal(jax.random.key(5), head["kernel"].shape)
  a = model.apply(variables, x, train=False)
  b = model.apply(variables, x, train=False)
  assert jnp.array_equal(a, b)
  c = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
  assert not jnp.allclose(a, c)


def test_shifted_patch_stack_shifts_diagonally():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  stack = customvit.shifted_patch_stack(x, 1)
  assert stack.shape == (1, 4, 4, 5)
  assert jnp.array_equal(stack[..., 0], x[..., 0])
  # Shift (dy, dx) = (-1, -1): output pixel (i, j) shows input (i - 1, j - 1), zero outside.
  assert stack[0, 1, 1, 1] == x[0, 0, 0, 0] and stack[0, 0, 0, 1] == 0


def test_bad_options_name_the_valid_ones():
  with pytest.raises(ValueError, match="valid options"):
    models.build("customvit", 4, depthh=2)
  with pytest.raises(ValueError, match="valid choices: .*customvit"):
    models.build("nonsense", 4)
  with pytest.raises(ValueError, match="patch_size"):
    m = models.build("customvit", 4, patch_size=3, dim=16, depth=1, num_heads=2)
    m.init(jax.random.key(0), jnp.zeros((1, 40, 40, 3)))
