"""Pure step functions: preprocessing on device, the train step and the eval step.

`train_step(state, batch, rng) -> (state, metrics)` and `eval_step(state, batch) -> dict`
are built by `make_steps` for one model and config and jit-compiled over the mesh: the
batch is sharded on 'data', the state replicated, and XLA adds the all-reduces.
"""
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from cellvit_jax import parallel
from cellvit_jax.ops import augment, dihedral, normalize

# fold_in constant of the blur augmentation's random stream: flips and rotations keep the
# draws they had before blur existed, whether or not blur is on.
_BLUR_STREAM = 1


class TrainState(train_state.TrainState):
  batch_stats: Any = flax.struct.field(default_factory=dict)


_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve_dtype(name: str, backend: str = "") -> str:
  """config.model.dtype -> "float32" | "bfloat16". "auto" (the default) computes in bf16 on
  GPU/TPU and in float32 on CPU, where XLA:CPU bf16 measured slower (benchmarks/FINDINGS.md);
  parameters and optimiser state stay float32 either way."""
  if name == "auto":
    return "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"
  if name not in _DTYPES:
    raise ValueError(f"config.model.dtype={name!r} is not supported; choose one of "
                     f"{sorted(['auto', *_DTYPES])}")
  return name


def compute_dtype(name: str):
  return _DTYPES[resolve_dtype(name)]


def with_resolved_dtype(config):
  """A copy of `config` whose model.dtype names the dtype this backend computes in, so that
  config.json and results.json record it (and a run moved to another backend is refused as
  a different config rather than resumed in another precision)."""
  resolved = resolve_dtype(config.model.dtype)
  if resolved == config.model.dtype:
    return config
  config = config.copy_and_resolve_references()
  config.model.dtype = resolved
  return config


def blur_augment_config(config):
  """config.augment.blur as (prob, sigma_min, sigma_max) floats, or None when it is off.

  Configs written before blur augmentation existed have no config.augment.blur: off.
  """
  b = config.augment.get("blur")
  if b is None or float(b.prob) == 0.0:
    return None
  return float(b.prob), float(b.sigma_min), float(b.sigma_max)


def check_augment(config):
  """Range checks of config.augment.blur, before anything is written (one-line errors)."""
  b = config.augment.get("blur")
  if b is None:
    return
  try:
    augment.sample_blur_sigma(jax.random.key(0), 1, float(b.prob), float(b.sigma_min),
                              float(b.sigma_max))
  except ValueError as e:
    raise ValueError(f"config.augment.blur: {e}") from None


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
}


def check_optim(config):
  """Range checks of config.optim, before anything is written (one-line errors)."""
  for key, (low, strict, high, meaning, example) in _OPTIM_RANGES.items():
    if key not in config.optim:
      continue
    value = config.optim[key]
    try:
      v = float(value)
    except (TypeError, ValueError):
      v = math.nan
    if not (math.isfinite(v) and (v > low if strict else v >= low) and v < high):
      bounds = (f"in [{low:g}, {high:g})" if math.isfinite(high) else
                f"{'>' if strict else '>='} {low:g}")
      raise ValueError(f"config.optim.{key}={value!r} must be a finite number {bounds} "
                       f"({meaning}); pass e.g. --config.optim.{key}={example}")


def preprocess(images, rng, config, train: bool):
  """uint8 (B, H, W, 3) -> normalised float32, with train-time augmentation.

  Train: random flips / 90-degree rotations, then (if config.augment.blur.prob > 0) a
  random Gaussian blur per sample, both on [0, 1] floats, then normalisation.
  """
  x = normalize.to_float(images)
  if train:
    x = dihedral.random_dihedral(rng, x, flip=config.augment.flip, rot90=config.augment.rot90)
    blur_args = blur_augment_config(config)
    if blur_args is not None:
      x = augment.random_blur(jax.random.fold_in(rng, _BLUR_STREAM), x, *blur_args)
  return _normalize(x, config)


def _normalize(x, config):
  """config.normalize, except for foundation models: they resize and then normalise with
  their preset's constants inside the model (models/foundation.py), the one place for it."""
  from cellvit_jax.models import fm_presets
  if fm_presets.is_foundation(config):
    return x
  return normalize.normalize(x, config.normalize.mean, config.normalize.std)


def eval_logits(model, config, state, images01):
  """Float [0, 1] images at the model's input size -> float32 logits (normalise, eval mode)."""
  x = _normalize(images01, config)
  return model.apply(_variables(state), x, train=False).astype(jnp.float32)


def _variables(state, params=None):
  v = {"params": state.params if params is None else params}
  if state.batch_stats:
    v["batch_stats"] = state.batch_stats
  return v


def _tree_norm(tree):
  return optax.tree.norm(tree)


def make_train_step(model, config, schedule):
  """The pure train step `(state, batch, rng) -> (state, metrics)`, not jitted: make_steps
  jits it alone, dispatch.py runs several in one call."""
  num_classes = model.num_classes
  smoothing = config.optim.label_smoothing

  def train_step(state, batch, rng):
    aug_rng, dropout_rng = jax.random.split(rng)
    images = preprocess(batch["image"], aug_rng, config, train=True)
    labels = batch["label"]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)

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
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
        "grad_norm": _tree_norm(grads),
        "param_norm": _tree_norm(new_state.params),
        "update_norm": _tree_norm(jax.tree.map(lambda a, b: a - b, new_state.params, state.params)),
        "lr": schedule(state.step),
    }
    return new_state, metrics

  return train_step


def make_steps(model, config, schedule, mesh):
  """Returns jitted (train_step, eval_step) for `model`."""
  train_step = make_train_step(model, config, schedule)

  def eval_step(state, batch):
    logits = eval_logits(model, config, state, normalize.to_float(batch["image"]))
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    mask = batch["mask"]
    return {"pred": jnp.argmax(logits, -1).astype(jnp.int32),
            "loss_sum": jnp.sum(jnp.where(mask, loss, 0.0))}

  rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  train_step = jax.jit(train_step, in_shardings=(rep, data, rep), out_shardings=(rep, rep),
                       donate_argnums=0)
  eval_step = jax.jit(eval_step, in_shardings=(rep, data), out_shardings=rep)
  return train_step, eval_step


def make_optimizer(config, total_steps: int, steps_per_epoch: int):
  """AdamW with linear warm-up and cosine decay; weight decay on matrices/kernels only."""
  from cellvit_jax import train_length
  o = config.optim
  warmup = min(train_length.every(o.warmup_epochs, steps_per_epoch) if o.warmup_epochs > 0 else 0,
               max(total_steps - 1, 0))
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=o.lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
      end_value=o.lr * o.min_lr_ratio)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  from cellvit_jax.models import fm_presets
  is_fm = fm_presets.is_foundation(config)
  if is_fm:  # as their pre-training did: no decay on class tokens and position tables either
    from cellvit_jax.models import foundation
    decay_mask = foundation.weight_decay_mask
  tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask)
  if is_fm:  # fine-tuning: deeper blocks learn faster than early ones
    tx = optax.chain(tx, foundation.layer_decay_transform(config))
  if o.grad_clip and o.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  return tx, schedule


def create_state(rng, model, tx, image_size: int, mesh) -> TrainState:
  """Initialises parameters (replicated over the mesh) from `rng`."""
  def init(rng):
    p_rng, d_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    variables = model.init({"params": p_rng, "dropout": d_rng}, dummy, train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables.get("batch_stats", {}))
  return jax.jit(init, out_shardings=parallel.replicated(mesh))(rng)
