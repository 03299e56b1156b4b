"""Pure step functions: preprocessing on device, the train step and the eval step.

`train_step(state, batch, rng) -> (state, metrics)` and `eval_step(state, batch) -> dict`
are built by `make_steps` for one model and config and jit-compiled over the mesh: the
batch is sharded on 'data', the state replicated, and XLA adds the all-reduces. What
differs per model (who normalises the input) comes from the model's interface
(models/interface.py); the optimiser is engine/optimizer.py's.
"""
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from cellvit_jax import parallel
from cellvit_jax.config import ranges as config_ranges
from cellvit_jax.ops import color, dihedral, mixing, normalize
from cellvit_jax.ops import augment as augment_ops

# fold_in constants of the augmentations' random streams, each folded into the step's
# augmentation rng: flips and rotations use the rng itself, and every augmentation keeps its
# draws whether or not the others are on.
_BLUR_STREAM = 1
_HED_STREAM = 2
_COLOR_STREAM = 3
_MIX_STREAM = 4


class TrainState(train_state.TrainState):
  batch_stats: Any = flax.struct.field(default_factory=dict)


class EmaTrainState(TrainState):
  """A TrainState that also keeps a moving average of {"params", "batch_stats"}
  (config.optim.ema_decay > 0), which evaluation uses. A subclass, so that a run without it
  keeps a state (and checkpoints) with no such field."""
  ema: Any = flax.struct.field(default_factory=dict)


class FrozenBaseTrainState(TrainState):
  """A TrainState whose model also reads weights it does not train (LoRA's base backbone,
  models/fm/lora.py): `frozen` is passed to the model as the 'frozen' collection, never
  differentiated nor checkpointed (runs/checkpoint.py); `base_fingerprint` names the weights
  it came from and is checkpointed."""
  frozen: Any = flax.struct.field(default_factory=dict)
  base_fingerprint: Any = None


def blur_augment_config(augment_cfg):
  """config.augment.blur as (prob, sigma_min, sigma_max) floats, or None when it is off."""
  b = augment_cfg.blur
  if float(b.prob) == 0.0:
    return None
  return float(b.prob), float(b.sigma_min), float(b.sigma_max)


def hed_augment_config(augment_cfg):
  """config.augment.hed as (prob, scale, shift) floats, or None when it is off."""
  h = augment_cfg.hed
  args = color.check_hed_args(h.prob, h.scale, h.shift)
  return None if color.hed_is_off(*args) else args


def color_augment_config(augment_cfg):
  """config.augment.color as (prob, brightness, contrast, saturation), or None when off."""
  c = augment_cfg.color
  args = color.check_color_args(c.prob, c.brightness, c.contrast, c.saturation)
  return None if color.color_is_off(*args) else args


def mix_config(augment_cfg):
  """(config.augment.mixup_alpha, config.augment.cutmix_alpha), or None when both are 0."""
  alphas = (mixing.check_alpha("mixup_alpha", augment_cfg.mixup_alpha),
            mixing.check_alpha("cutmix_alpha", augment_cfg.cutmix_alpha))
  return None if alphas == (0.0, 0.0) else alphas


# Ranges of the augmentation switches: key under config.augment -> (upper bound, example).
# Strengths above 1 would make a scale factor U(1 - s, 1 + s) negative.
_AUGMENT_RANGES = {
    "hed.prob": (1.0, 0.5), "hed.scale": (1.0, 0.05), "hed.shift": (1.0, 0.01),
    "color.prob": (1.0, 0.5), "color.brightness": (1.0, 0.1), "color.contrast": (1.0, 0.1),
    "color.saturation": (1.0, 0.1),
    "mixup_alpha": (math.inf, 0.2), "cutmix_alpha": (math.inf, 1.0),
}


def check_augment(augment_cfg):
  """Range checks of config.augment, before anything is written (one-line errors)."""
  b = augment_cfg.blur
  try:
    augment_ops.sample_blur_sigma(jax.random.key(0), 1, float(b.prob), float(b.sigma_min),
                                  float(b.sigma_max))
  except ValueError as e:
    raise ValueError(f"config.augment.blur: {e}") from None
  for key, (high, example) in _AUGMENT_RANGES.items():
    node = augment_cfg
    for part in key.split("."):
      node = node[part]
    config_ranges.check_number(f"augment.{key}", node, 0.0, high, note="0 turns it off",
                               example=example)


def augment(images, rng, augment_cfg):
  """uint8 (B, H, W, 3) -> float [0, 1] with train-time augmentation: random flips / 90-degree
  rotations, then each one that is on, per sample: stain (HED) jitter, colour jitter,
  Gaussian blur (the order a slide meets them: staining, the scanner's colour, its focus)."""
  x = normalize.to_float(images)
  x = dihedral.random_dihedral(rng, x, flip=augment_cfg.flip, rot90=augment_cfg.rot90)
  hed_args = hed_augment_config(augment_cfg)
  if hed_args is not None:
    x = color.random_hed_jitter(jax.random.fold_in(rng, _HED_STREAM), x, *hed_args)
  color_args = color_augment_config(augment_cfg)
  if color_args is not None:
    x = color.random_color_jitter(jax.random.fold_in(rng, _COLOR_STREAM), x, *color_args)
  blur_args = blur_augment_config(augment_cfg)
  if blur_args is not None:
    x = augment_ops.random_blur(jax.random.fold_in(rng, _BLUR_STREAM), x, *blur_args)
  return x


def model_input(model, images01, normalize_cfg):
  """Float [0, 1] images -> what `model` takes: normalised with config.normalize, unless the
  model normalises (and resizes) its input itself (the foundation models)."""
  if model.normalizes_input:
    return images01
  return normalize.normalize(images01, normalize_cfg.mean, normalize_cfg.std)


def eval_logits(model, normalize_cfg, state, images01):
  """Float [0, 1] images at the model's input size -> float32 logits (normalise, eval mode),
  from the weights' moving average when the run keeps one."""
  x = model_input(model, images01, normalize_cfg)
  return model.apply(_eval_variables(state), x, train=False).astype(jnp.float32)


def _as_variables(params, batch_stats, frozen=None):
  variables = {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}
  if frozen:
    variables["frozen"] = frozen
  return variables


def _variables(state, params=None):
  return _as_variables(state.params if params is None else params, state.batch_stats,
                       getattr(state, "frozen", None))


def _eval_variables(state):
  if not isinstance(state, EmaTrainState):
    return _variables(state)
  return _as_variables(**state.ema)


def _ema_target(state):
  return {"params": state.params, "batch_stats": state.batch_stats}


def ema_decay_at(decay, step):
  """The moving average's decay at optimiser step `step` (0-based): `decay`, capped by
  (1 + step) / (10 + step) so that the first steps do not keep the random initialisation
  (the warm-up of tf.train.ExponentialMovingAverage's num_updates)."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def reset_ema(state):
  """The state with its moving average (if it keeps one) set to its current weights: after
  the foundation models' published weights replace the random ones."""
  if not isinstance(state, EmaTrainState):
    return state
  return state.replace(ema=jax.tree.map(jnp.copy, _ema_target(state)))


def _tree_norm(tree):
  return optax.tree.norm(tree)


def make_train_step(model, schedule, optim_cfg, augment_cfg, normalize_cfg):
  """The pure train step `(state, batch, rng) -> (state, metrics)`, not jitted: make_steps
  jits it alone, multistep.py runs several in one call. The sections are config.optim
  (label smoothing, EMA), config.augment and config.normalize."""
  num_classes = model.num_classes
  smoothing = optim_cfg.label_smoothing
  mix_args = mix_config(augment_cfg)
  ema_decay = float(optim_cfg.ema_decay)

  def train_step(state, batch, rng):
    aug_rng, dropout_rng = jax.random.split(rng)
    images = model_input(model, augment(batch["image"], aug_rng, augment_cfg), normalize_cfg)
    labels = batch["label"]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)
    if mix_args is not None:
      # mixup / CutMix of the augmented batch and its soft targets. After model_input: a
      # convex combination or a paste commutes with the per-channel affine normalisation,
      # and with both off the step compiles to the program without them.
      images, targets = mixing.random_mix(jax.random.fold_in(aug_rng, _MIX_STREAM), images,
                                          targets, *mix_args)

    def loss_fn(params):
      variables = _variables(state, params)
      mutable = ["batch_stats"] if state.batch_stats else False
      out = model.apply(variables, images, train=True, rngs={"dropout": dropout_rng},
                        mutable=mutable)
      logits, updates = out if mutable else (out, {})
      loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
      return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads)
    if updates:
      new_state = new_state.replace(batch_stats=updates["batch_stats"])
    if ema_decay > 0:
      if not isinstance(state, EmaTrainState):
        raise ValueError("config.optim.ema_decay > 0 needs the state of "
                         "steps.create_state(..., ema=True)")
      d = ema_decay_at(ema_decay, state.step)
      new_state = new_state.replace(ema=jax.tree.map(
          lambda e, w: d.astype(e.dtype) * e + (1 - d).astype(e.dtype) * w, state.ema,
          _ema_target(new_state)))
    metrics = {
        "loss": loss,
        # Against the original labels, also under mixup / CutMix: how often the prediction is
        # each sample's own class (a mixed target has no single right class).
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
        "grad_norm": _tree_norm(grads),
        "param_norm": _tree_norm(new_state.params),
        "update_norm": _tree_norm(jax.tree.map(lambda a, b: a - b, new_state.params, state.params)),
        "lr": schedule(state.step),
    }
    return new_state, metrics

  return train_step


def make_steps(model, schedule, mesh, optim_cfg, augment_cfg, normalize_cfg):
  """Returns jitted (train_step, eval_step) for `model` (the sections as make_train_step's)."""
  train_step = make_train_step(model, schedule, optim_cfg, augment_cfg, normalize_cfg)

  def eval_step(state, batch):
    logits = eval_logits(model, normalize_cfg, state, normalize.to_float(batch["image"]))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    mask = batch["mask"]
    return {"pred": jnp.argmax(logits, -1).astype(jnp.int32),
            "loss_sum": jnp.sum(jnp.where(mask, loss, 0.0))}

  rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  train_step = jax.jit(train_step, in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                       donate_argnums=0)
  eval_step = jax.jit(eval_step, in_shardings=(rep, data), out_shardings=rep)
  return train_step, eval_step


def create_state(rng, model, tx, image_size: int, mesh, ema: bool = False,
                 trained_only: bool = False) -> TrainState:
  """Initialises parameters (replicated over the mesh) from `rng`; with `ema`, a moving
  average of the weights starts at them (config.optim.ema_decay > 0). A frozen-base model's
  state also carries its base (with_frozen_base), unless `trained_only`."""
  def init(rng):
    p_rng, d_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    variables = model.init({"params": p_rng, "dropout": d_rng}, dummy, train=False)
    cls = EmaTrainState if ema else TrainState
    state = cls.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                       batch_stats=variables.get("batch_stats", {}))
    return state.replace(ema=_ema_target(state)) if ema else state
  state = jax.jit(init, out_shardings=parallel.replicated(mesh))(rng)
  return state if trained_only else with_frozen_base(state, model, mesh)


def with_frozen_base(state, model, mesh):
  """For a model that reads a frozen base (getattr(model, 'holds_frozen_base')): the state
  as a FrozenBaseTrainState carrying it (replicated) and its fingerprint; others unchanged."""
  if not getattr(model, "holds_frozen_base", False):
    return state
  if isinstance(state, EmaTrainState):
    raise ValueError("a frozen-base (LoRA) model keeps no moving average; set "
                     "config.optim.ema_decay=0")
  fields = {f: getattr(state, f) for f in ("step", "apply_fn", "params", "tx", "opt_state",
                                            "batch_stats")}
  return FrozenBaseTrainState(
      **fields, frozen=parallel.replicate({"backbone": model.frozen_variables()}, mesh),
      base_fingerprint=parallel.replicate(model.base.fingerprint, mesh))
