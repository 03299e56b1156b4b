"""The state a run starts from, built one way for training, probing and loading a finished run.

`plan(model, optim_cfg, train_cfg, num_examples)` turns the FlagLimit subset's size into the
training length and the optimiser over it; `build_state(model, tx, ...)` makes the TrainState:
initialised from an rng (a new run), as shapes only (the target an orbax checkpoint is
restored into, which must match the optimiser training used), or around given parameters
(a probe's frozen backbone and fitted head).
"""
import dataclasses
from typing import Any, Callable

import jax

from cellvit_jax import parallel
from cellvit_jax.engine import optimizer, steps, train_length


@dataclasses.dataclass(frozen=True)
class Plan:
  total_steps: int
  steps_per_epoch: int
  tx: Any
  schedule: Callable


def plan(model, optim_cfg, train_cfg, num_examples: int) -> Plan:
  """Training length (config.train) of `num_examples` patches and the optimiser (config.optim)."""
  total, per_epoch = train_length.total_steps(train_cfg, num_examples, train_cfg.batch_size)
  tx, schedule = optimizer.make_optimizer(optim_cfg, model, total, per_epoch)
  return Plan(total, per_epoch, tx, schedule)


def build_state(model, tx, image_size: int, mesh, *, rng=None, ema: bool = False, params=None,
                abstract: bool = False):
  """The replicated TrainState of `model` under optimiser `tx`.

  rng: parameters initialised from it (with `ema`, a moving average starts at them);
  abstract: the same state as jax.ShapeDtypeStructs carrying the replicated sharding;
  params: a state around these parameters (no initialisation).
  """
  rep = parallel.replicated(mesh)
  if params is not None:
    state = steps.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    return parallel.replicate(state, mesh)
  if abstract:
    shapes = jax.eval_shape(
        lambda r: steps.create_state(r, model, tx, image_size, mesh, ema=ema, trained_only=True),
        jax.random.key(0))
    shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep), shapes)
    # A frozen base (LoRA) is not restored from a checkpoint: the target carries it for real.
    return steps.with_frozen_base(shapes, model, mesh)
  if rng is None:
    raise ValueError("build_state needs rng, params or abstract=True")
  return steps.create_state(rng, model, tx, image_size, mesh, ema=ema)
