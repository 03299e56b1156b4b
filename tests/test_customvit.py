import functools
import itertools
import json
import os

import jax
import numpy as np
import jax.numpy as jnp
import pytest

from cellvit_jax import models
from cellvit_jax.config import files as config_files
from cellvit_jax.models import customvit
from conftest import REPO

# Default configs/customvit.py architecture, 4 classes (docs/models.md model table).
CUSTOMVIT_PARAMS = 447_484


def _params(model):
  shapes = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, 40, 40, 3))))
  return sum(x.size for x in jax.tree.leaves(shapes["params"]))


def test_customvit_parameter_count():
  config = config_files.load(os.path.join(REPO, "configs", "customvit.py"))
  model = models.build("customvit", 4, **config.model.kwargs)
  assert _params(model) == CUSTOMVIT_PARAMS


SWITCHES = list(itertools.product(["patch", "conv"], [False, True], [False, True],
                                  ["learned", "sincos"], ["cls", "gap"]))
SWITCHES += [(tok, False, lsa, pos, pool) for tok in ("convstem", "cct") for lsa in (False, True)
             for pos in ("learned", "sincos", "relative") for pool in ("cls", "gap", "seq")]


@pytest.mark.parametrize("tokenizer,spt,lsa,pos_emb,pool", SWITCHES)
def test_every_switch_builds_and_runs(tokenizer, spt, lsa, pos_emb, pool):
  model = models.build("customvit", 3, tokenizer=tokenizer, spt=spt, lsa=lsa, pos_emb=pos_emb,
                       pool=pool, dim=16, depth=1, num_heads=2, drop_path=0.1)
  x = jax.random.uniform(jax.random.key(1), (2, 40, 40, 3))
  variables = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)
  mutable = ["batch_stats"] if "batch_stats" in variables else False
  y_train = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)},
                        mutable=mutable)
  y_train = y_train[0] if mutable else y_train
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
  c, _ = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)},
                     mutable=["batch_stats"])
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


@pytest.mark.parametrize("tokenizer,patch_size,grid", [("convstem", 4, 10), ("convstem", 2, 20),
                                                       ("cct", 4, 10), ("cct", 8, 5)])
def test_conv_tokenizers_reach_the_patch_grid(tokenizer, patch_size, grid):
  model = models.build("customvit", 3, tokenizer=tokenizer, patch_size=patch_size, dim=16,
                       depth=1, num_heads=2)
  variables = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, 40, 40, 3))))
  assert variables["params"]["pos_embedding"].shape == (1, grid * grid, 16)
  # convstem normalises with BatchNorm (running statistics), cct has no normalisation.
  assert ("batch_stats" in variables) == (tokenizer == "convstem")


@pytest.mark.parametrize("full_res,stem_convs", [(True, 3), (False, 2)])
def test_convstem_full_resolution_stage_is_a_switch(full_res, stem_convs):
  model = models.build("customvit", 3, tokenizer="convstem", patch_size=4, dim=16, depth=1,
                       num_heads=2, stem_full_res=full_res)
  variables = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, 40, 40, 3))))
  params = variables["params"]
  assert (sorted(k for k in params if k.startswith("stem"))
          == [f"stem{i}" for i in range(stem_convs)])
  # Either way the stem ends on the 10x10 grid; without the stride-1 stage the first conv
  # already halves the resolution.
  assert params["pos_embedding"].shape == (1, 100, 16)
  assert params["stem0"]["conv"]["kernel"].shape == (3, 3, 3, 8)  # max(dim // 4, 8)


def test_sequence_pooling_weights_tokens_by_a_softmax():
  model = models.build("customvit", 2, pool="seq", tokenizer="patch", dim=16, depth=1,
                       num_heads=2, drop_path=0.0)
  x = jax.random.uniform(jax.random.key(1), (2, 40, 40, 3))
  variables = model.init({"params": jax.random.key(0)}, x)
  params = jax.tree.map(lambda a: a, variables["params"])
  params["head"]["kernel"] = jax.random.normal(jax.random.key(2), params["head"]["kernel"].shape)
  # A zero scorer gives equal weights: sequence pooling is then exactly mean pooling.
  params["seq_pool"] = jax.tree.map(jnp.zeros_like, params["seq_pool"])
  gap = models.build("customvit", 2, pool="gap", tokenizer="patch", dim=16, depth=1,
                     num_heads=2, drop_path=0.0)
  gap_params = {k: v for k, v in params.items() if k != "seq_pool"}
  assert jnp.allclose(model.apply({"params": params}, x), gap.apply({"params": gap_params}, x),
                      atol=1e-5)


def test_conv_tokenizers_need_a_power_of_two_patch():
  model = models.build("customvit", 2, tokenizer="cct", patch_size=5, dim=16, depth=1, num_heads=2)
  with pytest.raises(ValueError, match="power-of-two patch_size"):
    model.init(jax.random.key(0), jnp.zeros((1, 40, 40, 3)))


@pytest.mark.parametrize("form", ["matmul", "mixed"])
@pytest.mark.parametrize("stride,kernel,cin,size", [(1, 3, 3, 10), (2, 3, 8, 10), (2, 3, 5, 10),
                                                    (2, 3, 4, 9), (2, 3, 4, 5), (1, 1, 4, 10)])
def test_conv_impl_equal_xla_convolution_and_its_gradients(form, stride, kernel, cin, size):
  from cellvit_jax.models import conv_impl
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (2, size, size + 1, cin))  # odd and even sizes, non-square
  w = jax.random.normal(kw, (kernel, kernel, cin, 6))
  pad = ((kernel // 2,) * 2,) * 2

  def xla(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), pad,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  def ours(x, w):
    return conv_impl.FORMS[form](x, w, stride)

  assert ours(x, w).shape == xla(x, w).shape
  assert jnp.allclose(ours(x, w), xla(x, w), atol=1e-5, rtol=1e-5)
  g = jax.random.normal(kg, xla(x, w).shape)
  for a, b in zip(jax.jit(jax.vjp(ours, x, w)[1])(g), jax.vjp(xla, x, w)[1](g)):
    assert a.shape == b.shape
    assert jnp.allclose(a, b, atol=1e-4, rtol=1e-5)


def test_stem_impl_changes_the_computation_not_the_parameters():
  x = jax.random.uniform(jax.random.key(1), (2, 40, 40, 3))
  kw = dict(dim=16, depth=1, num_heads=2, drop_path=0.0)
  conv = models.build("customvit", 3, stem_impl="conv", **kw)
  variables = conv.init({"params": jax.random.key(0)}, x)

  def loss(model, params):
    out, _ = model.apply({**variables, "params": params}, x, train=True,
                         mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)})
    return jnp.sum(out ** 2)

  want = jax.value_and_grad(functools.partial(loss, conv))(variables["params"])
  for impl in ("matmul", "mixed"):
    other = models.build("customvit", 3, stem_impl=impl, **kw)
    same = jax.tree.map(jnp.array_equal, variables, other.init({"params": jax.random.key(0)}, x))
    assert all(jax.tree.leaves(same))
    a = conv.apply(variables, x, train=False)
    b = other.apply(variables, x, train=False)
    assert jnp.allclose(a, b, atol=1e-4, rtol=1e-4)
    got = jax.value_and_grad(functools.partial(loss, other))(variables["params"])
    for u, v in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      assert jnp.allclose(u, v, atol=1e-4, rtol=1e-3)
  with pytest.raises(ValueError, match="conv implementation 'fast'"):
    models.build("customvit", 3, stem_impl="fast", **kw).init({"params": jax.random.key(0)}, x)


def test_customvit_runs_recorded_before_the_stem_switches_still_resume():
  from cellvit_jax.runs import workdir as workdir_lib
  new = config_files.load(os.path.join(REPO, "configs", "customvit.py")).to_dict()
  old = json.loads(json.dumps(new))
  del old["model"]["kwargs"]["stem_full_res"], old["model"]["kwargs"]["stem_impl"]
  assert workdir_lib.config_differences(old, new) == []  # absent meant True; impl is how only
  new["model"]["kwargs"]["stem_full_res"] = False
  assert workdir_lib.config_differences(old, new) == ["model.kwargs.stem_full_res"]


def test_reported_gflops_do_not_depend_on_the_stem_impl():
  from cellvit_jax.experiments import export_rows
  config = config_files.load(os.path.join(REPO, "configs", "customvit.py")).to_dict()
  flops = {}
  for impl in ("conv", "matmul"):
    config["model"]["kwargs"]["stem_impl"] = impl
    flops[impl] = export_rows.model_gflops(config, 4)
  assert flops["conv"] == flops["matmul"] > 0


def test_stem_blocks_add_residual_blocks_at_each_stem_resolution():
  model = models.build("customvit", 3, patch_size=4, dim=16, depth=1, num_heads=2,
                       stem_blocks=2, stem_impl="conv")
  x = jax.random.uniform(jax.random.key(1), (2, 40, 40, 3))
  variables = model.init({"params": jax.random.key(0)}, x)
  params = variables["params"]
  # Two blocks after each of the three stem convs (40x40, 20x20, 10x10), each at its width.
  assert sorted(k for k in params if "_block" in k) == [
      f"stem{i}_block{j}" for i in range(3) for j in range(2)]
  assert params["stem1_block0"]["conv1"]["conv"]["kernel"].shape == (3, 3, 16, 16)
  assert "shortcut" not in params["stem1_block0"]  # identity shortcut: same shape in and out
  # The matmul form of the stem computes the same function with the same parameters.
  matmul = models.build("customvit", 3, patch_size=4, dim=16, depth=1, num_heads=2,
                        stem_blocks=2, stem_impl="matmul")
  np.testing.assert_allclose(matmul.apply(variables, x), model.apply(variables, x),
                             rtol=1e-4, atol=1e-5)


def test_stem_blocks_from_skips_the_early_stem_convs():
  model = models.build("customvit", 3, patch_size=8, dim=16, depth=1, num_heads=2,
                       stem_blocks=1, stem_blocks_from=2)
  params = jax.eval_shape(model.init, {"params": jax.random.key(0)},
                          jnp.zeros((1, 40, 40, 3)))["params"]
  # Stem convs at 40, 20, 10 and 5 px: blocks after the last two only, at their width (16).
  assert sorted(k for k in params if "_block" in k) == ["stem2_block0", "stem3_block0"]
  assert params["stem2_block0"]["conv1"]["conv"]["kernel"].shape == (3, 3, 16, 16)


@pytest.mark.parametrize("kwargs", [dict(stem_blocks=-1), dict(stem_blocks=1, tokenizer="cct"),
                                    dict(stem_blocks=1, tokenizer="patch"),
                                    dict(stem_blocks_from=1),
                                    dict(stem_blocks=1, stem_blocks_from=-1),
                                    dict(stem_blocks=1, stem_blocks_from=4)])
def test_bad_stem_blocks_are_refused(kwargs):
  model = models.build("customvit", 3, dim=16, depth=1, num_heads=2, **kwargs)
  with pytest.raises(ValueError, match="stem_blocks"):
    model.init({"params": jax.random.key(0)}, jnp.zeros((1, 40, 40, 3)))


def test_hybrid_config_is_the_default_with_stem_blocks_and_the_comparison_length():
  base = config_files.load(os.path.join(REPO, "configs", "customvit.py")).to_dict()
  hybrid = config_files.load(os.path.join(REPO, "configs", "customvit_hybrid.py")).to_dict()
  assert hybrid["model"]["kwargs"].pop("stem_blocks") == 1
  assert base["model"]["kwargs"].pop("stem_blocks") == 0
  assert hybrid["train"].pop("epochs") == 30.0 and hybrid["train"].pop("eval_every_epochs") == 30
  for config in (base, hybrid):
    config["train"].pop("epochs", None), config["train"].pop("eval_every_epochs", None)
  assert hybrid == base
  model = models.build("customvit", 4, **config_files.load(
      os.path.join(REPO, "configs", "customvit_hybrid.py")).model.kwargs)
  variables = jax.eval_shape(
      lambda: model.init({"params": jax.random.key(0)}, jnp.zeros((1, 40, 40, 3))))
  assert sum(a.size for a in jax.tree.leaves(variables["params"])) == 832_156  # docs: 0.83 M


def test_relative_position_bias_shares_one_entry_per_offset_and_heads_differ():
  from cellvit_jax.models import layers
  index = layers.relative_position_index(2, 3)  # a 2 x 3 grid: (2*2-1) * (2*3-1) = 15 offsets
  assert index.shape == (6, 6) and index.min() == 0 and index.max() == 14
  # Tokens are row-major: 0=(0,0), 1=(0,1), 4=(1,1), 5=(1,2). Same offset (+1, +1): same entry.
  assert index[4, 0] == index[5, 1] and index[0, 4] == index[1, 5] and index[4, 0] != index[0, 4]
  assert len(set(index.reshape(-1))) == 15
  assert np.array_equal(layers.relative_position_index(5), layers.relative_position_index(5, 5))
  module = layers.RelativePositionBias(2, 3, num_heads=2, cls_token=True)
  variables = module.init(jax.random.key(0))
  assert not np.any(variables["params"]["table"])  # zero at init: starts as plain attention
  table = np.arange(18 * 2, dtype=np.float32).reshape(18, 2)  # 15 grid + 3 class-token rows
  bias = module.apply({"params": {"table": table}})
  assert bias.shape == (1, 2, 7, 7)
  np.testing.assert_array_equal(bias[0, :, 1:, 1:], table[index].transpose(2, 0, 1))
  assert set(np.asarray(bias[0, 0, 0, 1:])) == {30.0}  # class token -> grid: row 15, head 0
  assert set(np.asarray(bias[0, 0, 1:, 0])) == {32.0}  # grid -> class token: row 16
  assert bias[0, 1, 0, 0] == 35.0


def test_relative_pos_emb_has_no_absolute_embedding_and_its_bias_changes_the_output():
  kwargs = dict(dim=16, depth=2, num_heads=2, patch_size=8)
  model = models.build("customvit", 4, pos_emb="relative", **kwargs)
  x = jax.random.uniform(jax.random.key(1), (2, 40, 40, 3))
  variables = model.init({"params": jax.random.key(0)}, x)
  params = variables["params"]
  assert "pos_embedding" not in params and params["block1_rel_pos"]["table"].shape == (81 + 3, 2)
  params["head"]["kernel"] = jax.random.normal(jax.random.key(5), params["head"]["kernel"].shape)
  before = model.apply(variables, x)
  params["block0_rel_pos"]["table"] = jax.random.normal(jax.random.key(6), (84, 2))
  assert not np.allclose(before, model.apply(variables, x))
  with pytest.raises(ValueError, match="'learned', 'sincos' or 'relative'"):
    models.build("customvit", 4, pos_emb="rope", **kwargs).init(jax.random.key(0), x)
