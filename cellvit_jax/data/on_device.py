"""Training data resident on the device: the FlagLimit subset placed once, grain streams positions.

A 0.3 M-parameter model on 40x40 patches finishes a step on an accelerator sooner than the
host can decode, batch and transfer the next batch, so the loop, not the device, sets the
speed. With config.dataset.on_device the subset's uint8 images and labels are placed on the
devices once (replicated: every epoch reshuffles, so every device needs every image), grain
yields batches of positions into them (pipeline.train_index_dataset: the same shuffle,
repetition, host sharding and checkpointable state as the record stream), and the jitted
step gathers the batch on the device (gather). "auto" does so when the subset fits the
per-device budget config.dataset.on_device_max_mb; larger datasets keep streaming.
"""
import jax
import jax.numpy as jnp
import numpy as np

from cellvit_jax import parallel

_ON_DEVICE = {"auto": None, "true": True, "false": False}


def check_config(dataset_cfg):
  """One-line errors for config.dataset.on_device and config.dataset.on_device_max_mb."""
  on_device_setting(dataset_cfg.on_device)
  mb = dataset_cfg.on_device_max_mb
  if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not mb >= 0:
    raise ValueError(f"config.dataset.on_device_max_mb={mb!r} must be a number of megabytes >= 0, "
                     "e.g. 1024")


def on_device_setting(value):
  """config.dataset.on_device -> None ("auto"), True or False."""
  key = str(value).strip().lower()
  if key not in _ON_DEVICE:
    raise ValueError(f"config.dataset.on_device={value!r} is not one of 'auto', 'true', 'false'; "
                     "'auto' keeps the training subset on the device when it fits "
                     "config.dataset.on_device_max_mb")
  return _ON_DEVICE[key]


def use_on_device(value, num_bytes: int, max_mb: float) -> bool:
  """Whether the training subset (num_bytes of uint8 images) is held on every device."""
  forced = on_device_setting(value)
  return forced if forced is not None else num_bytes <= max_mb * 2 ** 20


def place(images: np.ndarray, labels: np.ndarray, mesh) -> dict:
  """The whole training subset, replicated on every device of `mesh` (each process passes
  the same full arrays)."""
  sharding = parallel.replicated(mesh)
  put = lambda a: jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])
  return {"image": put(np.asarray(images, np.uint8)), "label": put(np.asarray(labels, np.int32))}


def shapes(num_examples: int, image_size: int, mesh) -> dict:
  """What place() returns for `num_examples` patches, as shapes with its sharding: enough to
  compile a program that reads the subset before the subset is loaded."""
  rep = parallel.replicated(mesh)
  return {"image": jax.ShapeDtypeStruct((num_examples, image_size, image_size, 3), jnp.uint8,
                                        sharding=rep),
          "label": jax.ShapeDtypeStruct((num_examples,), jnp.int32, sharding=rep)}


def gather(resident: dict, batch: dict, mesh) -> dict:
  """Inside a jitted step: {'index'} positions -> the {'image', 'label'} batch they name, split
  over the 'data' axis like a streamed batch; a streamed batch passes through."""
  if "index" not in batch:
    return batch
  out = {k: jnp.take(v, batch["index"], axis=0, mode="clip") for k, v in resident.items()}
  return jax.lax.with_sharding_constraint(out, parallel.batch_sharding(mesh))
