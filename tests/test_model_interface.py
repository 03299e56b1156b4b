"""The model interface the step and the optimiser use instead of asking the model's kind."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cellvit_jax import models
from cellvit_jax.config import defaults as config_defaults
from cellvit_jax.engine import optimizer, steps
from cellvit_jax.models import interface


class _TwoLayers(interface.Model):
  num_classes: int = 2
  layerwise_lr = True

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(3, name="frozen")(x.reshape(x.shape[0], -1))
    return nn.Dense(self.num_classes, name="head")(x)

  def lr_scales(self, params):
    return {k: jax.tree.map(lambda _: 0.0 if k == "frozen" else 1.0, v) for k, v in params.items()}


def _optim(**kw):
  optim = ml_collections.ConfigDict(dict(config_defaults.get_config().optim))
  optim.update(kw)
  return optim


def test_lr_scales_of_the_model_reach_the_updates():
  model = _TwoLayers()
  params = model.init(jax.random.key(0), jnp.ones((2, 4, 4, 3)))["params"]
  tx, _ = optimizer.make_optimizer(_optim(warmup_epochs=0.0, weight_decay=0.0), model, 10, 5)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert all(float(jnp.abs(u).max()) == 0.0 for u in jax.tree.leaves(updates["frozen"]))
  assert all(float(jnp.abs(u).min()) > 0.0 for u in jax.tree.leaves(updates["head"]))


def test_task_models_decay_matrices_only_and_use_one_learning_rate():
  model = models.build("customvit", 4, dim=16, depth=1, num_heads=2)
  params = model.init(jax.random.key(0), jnp.zeros((1, 40, 40, 3)))["params"]
  mask = model.weight_decay_mask(params)
  decayed_iff_matrix = jax.tree.map(lambda p, m: m == (p.ndim > 1), params, mask)
  assert jax.tree.leaves(decayed_iff_matrix) == [True] * len(jax.tree.leaves(params))
  assert not model.layerwise_lr and not model.normalizes_input
  # No per-parameter scaling in the chain: the optimiser state is AdamW's (+ clip) only.
  tx, _ = optimizer.make_optimizer(_optim(grad_clip=0.0), model, 10, 5)
  plain = optax.adamw(lambda step: 1e-3, weight_decay=0.05, mask=model.weight_decay_mask)
  assert jax.tree.structure(tx.init(params)) == jax.tree.structure(plain.init(params))


def test_the_step_normalises_only_for_models_that_do_not_normalise_themselves():
  config = config_defaults.get_config()
  x = jnp.full((1, 4, 4, 3), 0.5)

  class SelfNormalising(_TwoLayers):
    normalizes_input = True

  np.testing.assert_array_equal(steps.model_input(SelfNormalising(), x, config.normalize), x)
  expected = (0.5 - np.asarray(config.normalize.mean)) / np.asarray(config.normalize.std)
  np.testing.assert_allclose(steps.model_input(_TwoLayers(), x, config.normalize)[0, 0, 0],
                             expected,
                             rtol=1e-6)
