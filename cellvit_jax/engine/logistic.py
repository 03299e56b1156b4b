"""Multinomial logistic regression on fixed features, full batch, in JAX (L-BFGS).

Used by the linear probe of foundation-model features and by the pixel baseline. The L2
strength is chosen on a validation set from a grid, as is usual for linear probes.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax


def standardize_stats(x, min_std_ratio: float = 0.0):
  """(mean, sd + 1e-6) of each feature; with min_std_ratio > 0 the sd is floored at that
  fraction of the mean sd, so that a feature (nearly) constant over a tiny training set does
  not get an unbounded scale."""
  mean = x.mean(axis=0)
  std = x.std(axis=0) + 1e-6
  if min_std_ratio > 0:
    std = np.maximum(std, min_std_ratio * std.mean())
  return mean, std


@jax.jit
def _predict(w, b, x):
  return x @ w + b


def fit(x, y, num_classes: int, l2: float, max_steps: int = 300):
  """Minimises mean cross-entropy + l2/2 * ||W||^2 (bias not penalised). Returns (W, b)."""
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.int32)
  return _fit(x, y, jnp.float32(l2), num_classes, max_steps)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _fit(x, y, l2, num_classes: int, max_steps: int):
  # l2 is traced: one compilation serves a whole validation grid.
  params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))

  def loss(params):
    w, b = params
    ce = optax.softmax_cross_entropy_with_integer_labels(x @ w + b, y).mean()
    return ce + 0.5 * l2 * jnp.sum(w * w)

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry, _):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
    return (optax.apply_updates(params, updates), state), value

  (params, _), _ = jax.lax.scan(step, (params, solver.init(params)), None, length=max_steps)
  return params


def predict(params, x):
  w, b = params
  return np.asarray(jnp.argmax(_predict(w, b, jnp.asarray(x, jnp.float32)), -1))


def fit_with_validation(x_train, y_train, x_val, y_val, num_classes: int,
                        l2_grid=(1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0), max_steps: int = 300):
  """Fits one model per L2 strength; returns (params, chosen l2, {l2: val accuracy})."""
  scores, fitted = {}, {}
  for l2 in l2_grid:
    fitted[l2] = fit(x_train, y_train, num_classes, l2, max_steps)
    scores[l2] = float(np.mean(predict(fitted[l2], x_val) == np.asarray(y_val)))
  best = max(l2_grid, key=lambda l2: (scores[l2], l2))  # ties: the stronger regulariser
  return fitted[best], best, scores
