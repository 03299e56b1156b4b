"""The optimiser: AdamW with linear warm-up and cosine decay, and its config checks.

`make_optimizer(optim, model, total_steps, steps_per_epoch) -> (tx, schedule)` reads
config.optim only; which parameters decay and any per-parameter learning-rate factors
(the foundation models' layer-wise decay) come from the model's interface
(models/interface.py), so this module never asks what kind of model it optimises.
"""
import math

import jax
import jax.numpy as jnp
import optax

from cellvit_jax.config import ranges as config_ranges
from cellvit_jax.engine import train_length

# config.optim fields: (lowest, above it only?, highest (excluded), meaning, an example). A bad
# value (nan, inf, a negative rate) would otherwise surface steps later as a non-finite loss.
_OPTIM_RANGES = {
    "lr": (0.0, True, math.inf, "the peak learning rate", "1e-3"),
    "weight_decay": (0.0, False, math.inf, "AdamW's decoupled weight decay; 0: none", "0.05"),
    "label_smoothing": (0.0, False, 1.0, "0: none", "0.1"),
    "b1": (0.0, False, 1.0, "Adam's first-moment decay", "0.9"),
    "b2": (0.0, False, 1.0, "Adam's second-moment decay", "0.999"),
    "warmup_epochs": (0.0, False, math.inf, "epochs of linear warm-up; 0: none", "1.0"),
    "min_lr_ratio": (0.0, False, math.inf, "the final lr as a fraction of lr", "0.01"),
    "grad_clip": (0.0, False, math.inf, "the global-norm clip; 0: off", "1.0"),
    "ema_decay": (0.0, False, 1.0, "the per-step decay of the weights' moving average; 0: off",
                  "0.998"),
}


def check_optim(optim_cfg):
  """Range checks of config.optim, before anything is written (one-line errors)."""
  for key, (low, strict, high, meaning, example) in _OPTIM_RANGES.items():
    if key in optim_cfg:
      config_ranges.check_number(f"optim.{key}", optim_cfg[key], low, high, low_open=strict,
                                 high_open=True, note=meaning, example=example)


def scale_by_model_lr(model) -> optax.GradientTransformation:
  """Multiplies each update by its factor in model.lr_scales (stateless)."""
  def update(updates, state, params=None):
    del params
    scales = model.lr_scales(updates)
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(optim, model, total_steps: int, steps_per_epoch: int):
  """`optim` is config.optim; `model` supplies which parameters decay and, when it trains
  with per-parameter learning rates (model.layerwise_lr), their factors."""
  warmup = min(train_length.every(optim.warmup_epochs, steps_per_epoch)
               if optim.warmup_epochs > 0 else 0, max(total_steps - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.lr, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=optim.lr * optim.min_lr_ratio)
  tx = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay,
                   mask=model.weight_decay_mask)
  if model.layerwise_lr:
    tx = optax.chain(tx, scale_by_model_lr(model))
  if optim.grad_clip and optim.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(optim.grad_clip), tx)
  return tx, schedule
