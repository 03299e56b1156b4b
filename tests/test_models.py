"""Tests for every registered model: shapes, pinned parameter counts, training, eval determinism.

The full-size default architectures are too slow to train on a 2-core CPU test run, so they
are checked for their parameter count only, through jax.eval_shape (tracing, no compute).
The training / eval / BatchNorm checks run on reduced width/depth variants (SMALL_KWARGS) of
the same modules: the same code paths (block types, stochastic depth, BatchNorm, shifted
windows), fewer channels and blocks.
"""
import dataclasses
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cellvit_jax import models
from cellvit_jax.config import files as config_files
from cellvit_jax.models import layers, swin
from conftest import REPO

# 'params' collection of the default architecture at num_classes=4 (the paper's four
# phenotypes, and synthetic_cells'), 40x40x3 input. Each figure is also in the model's module
# docstring. A new registration must add its figure here (test_every_model_has_a_pinned_count).
PARAM_COUNTS = {
    "convnext_tiny": 27_819_748,
    "customvit": 447_484,
    "densenet121": 6_950_276,
    "efficientnet_b0": 4_012_672,
    "resnet18": 11_170_884,
    "resnet50": 23_508_548,
    "swin_tiny": 27_504_142,
    "vit_small": 21_353_860,
}

# Reduced variants for the training checks. A model missing here trains at its full size.
SMALL_KWARGS = {
    "convnext_tiny": dict(depths=(1, 1, 1, 1), dims=(16, 32, 32, 32)),
    "customvit": dict(dim=32, depth=2, num_heads=2),
    "densenet121": dict(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16),
    "efficientnet_b0": dict(width_mult=0.25, depth_mult=0.25),
    "resnet18": dict(width=8),
    "resnet50": dict(width=8, stage_sizes=(1, 1, 1, 1)),
    # Shifted blocks in stages 1-2.
    "swin_tiny": dict(embed_dim=16, depths=(2, 2, 1, 1), num_heads=(1, 2, 2, 4)),
    "vit_small": dict(dim=32, depth=2, num_heads=2),
}

NUM_CLASSES = 5
BATCH = 16
TRAIN_STEPS = 6
# XLA:CPU spends most of a small test's time compiling; these tiny programs need no optimising.
FAST_COMPILE = dict(xla_backend_optimization_level=0, xla_llvm_disable_expensive_passes=True)


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_every_model_has_a_pinned_count():
  assert set(PARAM_COUNTS) == set(models.names()), (
      "pin the parameter count of every registered model in PARAM_COUNTS (and its docstring)")


@pytest.mark.parametrize("name", models.names())
def test_model(name):
  # 1. The real default architecture: logits shape and parameter count, by shape inference only.
  full = models.build(name, num_classes=4)
  out, shapes = jax.eval_shape(
      lambda: full.init_with_output(jax.random.key(0), jnp.zeros((2, 40, 40, 3))))
  assert out.shape == (2, 4) and out.dtype == jnp.float32
  assert _count(shapes["params"]) == PARAM_COUNTS[name]
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(shapes["params"]))

  # 2. A reduced variant: logits, memorising a tiny fixed batch, eval determinism, BatchNorm.
  model = models.build(name, num_classes=NUM_CLASSES, **SMALL_KWARGS.get(name, {}))
  x = jax.random.normal(jax.random.key(1), (BATCH, 40, 40, 3))
  labels = jnp.arange(BATCH) % NUM_CLASSES
  init = jax.jit(model.init, compiler_options=FAST_COMPILE)
  variables = init({"params": jax.random.key(2), "dropout": jax.random.key(3)}, x)
  params = variables["params"]
  stats0 = variables.get("batch_stats", {})
  has_bn = bool(jax.tree.leaves(stats0))
  # Eval with a dropout rng at hand, so that any dropout / drop path active in eval shows.
  evaluate = jax.jit(lambda v, rng: model.apply(v, x, train=False, rngs={"dropout": rng}),
                     compiler_options=FAST_COMPILE)

  logits = evaluate(variables, jax.random.key(4))
  assert logits.shape == (BATCH, NUM_CLASSES) and logits.dtype == jnp.float32

  tx = optax.adamw(1e-3, weight_decay=0.05)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def step(params, stats, opt_state, rng):
    def loss_fn(p):
      out, state = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                               rngs={"dropout": rng}, mutable=["batch_stats"])
      loss = optax.softmax_cross_entropy_with_integer_labels(out, labels).mean()
      return loss, state.get("batch_stats", {})
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  opt_state = jax.jit(tx.init)(params)
  stats = stats0
  losses = []
  for i in range(TRAIN_STEPS):
    params, stats, opt_state, loss = step(params, stats, opt_state, jax.random.key(100 + i))
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)), losses
  assert losses[-1] < losses[0] - 0.01, losses

  # Eval is deterministic: the same output under two different dropout rngs.
  trained = {"params": params, "batch_stats": stats} if has_bn else {"params": params}
  a = evaluate(trained, jax.random.key(7))
  np.testing.assert_array_equal(a, evaluate(trained, jax.random.key(8)))

  if has_bn:
    # Training updated the running statistics, and eval reads them (eval applies without
    # mutable=['batch_stats'], so it cannot write them either: Flax would raise).
    changed = jax.tree.map(lambda u, v: bool(np.any(np.asarray(u) != np.asarray(v))), stats0, stats)
    assert all(jax.tree.leaves(changed)), "some BatchNorm running statistics were not updated"
    stale = evaluate({"params": params, "batch_stats": stats0}, jax.random.key(7))
    assert not np.allclose(a, stale), "eval output does not depend on the running statistics"

  # bfloat16 compute with the same float32 parameters still returns float32 logits (shape
  # inference only: XLA:CPU bf16 compiles are slow and numerics are checked on accelerators).
  low = dataclasses.replace(model, dtype=jnp.bfloat16)
  out = jax.eval_shape(lambda v: low.apply(v, x, train=False), trained)
  assert out.shape == (BATCH, NUM_CLASSES) and out.dtype == jnp.float32


@pytest.mark.parametrize("name", models.names())
def test_config_builds_its_model(name):
  config = config_files.load(os.path.join(REPO, "configs", f"{name}.py"))
  assert config.model.name == name
  # build rejects unknown kwargs.
  model = models.build(config.model.name, num_classes=4, **config.model.kwargs)
  assert type(model) is models.get_class(name)
  # configs/<name>.py is the default architecture, whose parameter count is pinned above.
  default = models.build(name, num_classes=4)
  differ = {k: (getattr(model, k), getattr(default, k)) for k in config.model.kwargs
            if getattr(model, k) != getattr(default, k)}
  assert not differ, f"configs/{name}.py departs from the module defaults: {differ}"


@pytest.mark.parametrize("shift", [0, 2])
def test_swin_block_matches_dense_masked_attention(shift):
  """A (shifted) window block equals full attention restricted to the image regions it should see.

  Reference, written without rolling or partitioning: with window w and shift s, the windows
  cover, in image coordinates, the row (and column) segments [0, s), [s, s + w), ...,
  [H - w + s, H) (for s = 0: [0, w), [w, 2w), ...). A token attends exactly to the tokens in
  its own row segment and column segment, with the relative position bias of their offset.
  """
  h = w = 10
  window, dim, heads = 5, 8, 2
  block = swin.SwinBlock(heads, window, shift)
  x = jax.random.normal(jax.random.key(0), (2, h, w, dim))
  variables = block.init(jax.random.key(1), x, train=False)
  # Give the bias table values of order 1 (init is std 0.02) so a wrong lookup cannot hide.
  p = jax.tree_util.tree_map(lambda t: t, variables["params"])
  p["attn"]["relative_position_bias_table"] = jax.random.normal(
      jax.random.key(2), p["attn"]["relative_position_bias_table"].shape)
  got = jax.jit(lambda p: block.apply({"params": p}, x, train=False),
                compiler_options=FAST_COMPILE)(p)

  seg = np.array([0 if r < shift else 1 + (r - shift) // window for r in range(h)])
  rows, cols = np.divmod(np.arange(h * w), w)
  same = (seg[rows][:, None] == seg[rows][None]) & (seg[cols][:, None] == seg[cols][None])
  table = np.asarray(p["attn"]["relative_position_bias_table"])
  offset = ((rows[:, None] - rows[None] + window - 1) * (2 * window - 1)
            + (cols[:, None] - cols[None] + window - 1))
  bias = np.where(same[None], table[np.clip(offset, 0, len(table) - 1)].transpose(2, 0, 1), -1e9)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def reference(p):
    y = nn.LayerNorm(epsilon=1e-5).apply({"params": p["norm1"]}, x).reshape(2, h * w, dim)
    y = layers.SelfAttention(heads).apply({"params": p["attn"]["attn"]}, y, False,
                                          bias=jnp.asarray(bias)[None])
    out = x + y.reshape(x.shape)
    z = nn.LayerNorm(epsilon=1e-5).apply({"params": p["norm2"]}, out)
    return out + layers.Mlp(4 * dim).apply({"params": p["mlp"]}, z, False)

  ref = reference(p)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_window_partition_roundtrip_and_mask():
  x = jnp.arange(2 * 10 * 10 * 3, dtype=jnp.float32).reshape(2, 10, 10, 3)
  wins = layers.window_partition(x, 5)
  assert wins.shape == (8, 25, 3)
  np.testing.assert_array_equal(wins[1].reshape(5, 5, 3), x[0, :5, 5:])  # batch-major, row-major
  np.testing.assert_array_equal(layers.window_reverse(wins, 5, 10, 10), x)
  mask = layers.shifted_window_mask(10, 10, 5, 2)
  assert mask.shape == (4, 25, 25)
  assert np.all(mask[0] == 0)  # the top-left window holds one region only
  assert np.all(np.diagonal(mask, axis1=1, axis2=2) == 0)  # a token always sees itself


def test_token_dense_is_the_dense_layer_on_a_flat_view():
  """Same parameters and outputs as nn.Dense on the 3-D tokens, and the same gradients."""
  x = jax.random.normal(jax.random.key(0), (3, 7, 8))
  layer = nn.Dense(5)
  variables = layer.init(jax.random.key(1), x)

  def loss(fn, v, x):
    return jnp.sum(jnp.sin(fn(v, x)))

  plain = lambda v, x: layer.apply(v, x)  # noqa: E731
  flat = lambda v, x: layer.apply(v, x, method=lambda m, x: layers.token_dense(m, x))  # noqa: E731
  np.testing.assert_allclose(flat(variables, x), plain(variables, x), rtol=1e-5, atol=1e-6)
  assert flat(variables, x).shape == (3, 7, 5)
  for a, b in zip(jax.tree.leaves(jax.grad(loss, argnums=(1, 2))(flat, variables, x)),
                  jax.tree.leaves(jax.grad(loss, argnums=(1, 2))(plain, variables, x))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
