"""Training length as epochs, steps or examples, converted in one place.

With FlagLimit the training set size changes 64x across a sweep, so configs usually give
epochs; steps or examples fix the compute budget instead.
"""
import math


def total_steps(train_config, num_train: int, global_batch: int):
  """Returns (total_steps, steps_per_epoch). The first of epochs/steps/examples > 0 wins."""
  if num_train < 1:
    raise ValueError("the training set is empty")
  steps_per_epoch = max(1, num_train // global_batch)
  if train_config.epochs and train_config.epochs > 0:
    total = math.ceil(train_config.epochs * steps_per_epoch)
  elif train_config.steps and train_config.steps > 0:
    total = int(train_config.steps)
  elif train_config.examples and train_config.examples > 0:
    total = math.ceil(train_config.examples / global_batch)
  else:
    raise ValueError("set one of config.train.epochs, config.train.steps or "
                     "config.train.examples to a positive number")
  return max(1, total), steps_per_epoch


def every(epochs: float, steps_per_epoch: int) -> int:
  """An interval given in epochs, in steps (at least 1)."""
  return max(1, round(epochs * steps_per_epoch))
