"""Several train steps per jitted call, over host batches or training data resident on the device.

A 0.3 M-parameter model on 40x40 patches finishes a step on an accelerator sooner than the
host can decode, batch, transfer and launch the next one, so the loop, not the device, sets
the speed. Two switches remove the host from the per-step path:

- config.dataset.on_device: the FlagLimit subset's uint8 images and labels are placed on the
  devices once (replicated: every epoch reshuffles, so every device needs every image), grain
  yields batches of positions into them (pipeline.train_index_dataset: the same shuffle,
  repetition, host sharding and checkpointable state as the record stream), and the jitted
  call gathers the batch on the device. "auto" does so when the subset fits the per-device
  budget config.dataset.on_device_max_mb; larger datasets keep streaming from the host.
- config.train.steps_per_dispatch = k: one jitted call runs up to k steps, a lax.scan over k
  stacked batches (of positions, or of images when streamed). The per-step rng is still
  fold_in(rng, step), taken inside the call from state.step, so k steps in one call compute
  what k calls do, and every step's metrics come back for logging.
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from cellvit_jax import parallel

_ON_DEVICE = {"auto": None, "true": True, "false": False}


def check_config(config):
  """One-line errors for config.dataset.on_device(_max_mb) and config.train.steps_per_dispatch."""
  on_device_setting(config.dataset.on_device)
  mb = config.dataset.on_device_max_mb
  if isinstance(mb, bool) or not isinstance(mb, (int, float)) or not mb >= 0:
    raise ValueError(f"config.dataset.on_device_max_mb={mb!r} must be a number of megabytes >= 0, "
                     "e.g. 1024")
  k = config.train.steps_per_dispatch
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"config.train.steps_per_dispatch={k!r} must be an integer >= 1 (train "
                     "steps per jitted call), e.g. 1 on CPU or 16 on a GPU")


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


def place_resident(images: np.ndarray, labels: np.ndarray, mesh) -> dict:
  """The whole training subset, replicated on every device of `mesh` (each process passes
  the same full arrays)."""
  sharding = parallel.replicated(mesh)
  put = lambda a: jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])
  return {"image": put(np.asarray(images, np.uint8)), "label": put(np.asarray(labels, np.int32))}


def stacked_sharding(mesh) -> NamedSharding:
  """(steps, batch, ...) arrays: the step axis whole, the batch axis split over 'data'."""
  return NamedSharding(mesh, P(None, parallel.DATA_AXIS))


def stack_batches(batches, mesh, length: int) -> dict:
  """Host-local batches of one dispatch -> global (length, global batch, ...) jax.Arrays,
  zero-padded after the given batches (make_multi_step runs only the given ones)."""
  sharding = stacked_sharding(mesh)
  out = {}
  for k in batches[0]:
    local = np.zeros((length, *np.shape(batches[0][k])), np.asarray(batches[0][k]).dtype)
    local[:len(batches)] = np.stack([b[k] for b in batches])
    out[k] = jax.make_array_from_process_local_data(sharding, local)
  return out


def buffer_length(steps_per_dispatch: int) -> int:
  """Leading length of the stacked batches: at least 2, because XLA simplifies a loop over a
  length-1 buffer into a program whose step differs from the general one in the last bits
  (measured on CPU); from 2 up, every steps_per_dispatch computes the same bits."""
  return max(2, steps_per_dispatch)


def make_multi_step(train_step, mesh, steps_per_dispatch: int):
  """Jits `(state, resident, xs, n, rng) -> (state, metrics)`: the first n of the
  steps_per_dispatch stacked batches in xs, each a step of the pure `train_step`
  (steps.make_train_step) taking fold_in(rng, step).

  xs: {'image', 'label'} from the host or {'index'} into `resident` (place_resident; {} when
  streaming), leading axis buffer_length(steps_per_dispatch) (stack_batches). Each metric
  comes back with that leading axis, the first n entries filled. n is a runtime value, so one program serves every
  dispatch length and a step computes bit for bit the same whatever dispatch it is in.
  """
  data_sharding = parallel.batch_sharding(mesh)
  length = buffer_length(steps_per_dispatch)

  def one_step(state, resident, batch, rng):
    if "index" in batch:  # gather the batch from the resident subset, on the device
      batch = {k: jnp.take(v, batch["index"], axis=0, mode="clip") for k, v in resident.items()}
      batch = jax.lax.with_sharding_constraint(batch, data_sharding)
    return train_step(state, batch, jax.random.fold_in(rng, state.step))

  def run(state, resident, xs, n, rng):
    at = lambda tree, i: jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, i, keepdims=False),
                                      tree)
    shapes = jax.eval_shape(one_step, state, resident, at(xs, 0), rng)[1]
    buffers = jax.tree.map(lambda s: jnp.zeros((length, *s.shape), s.dtype), shapes)

    def body(i, carry):
      state, buffers = carry
      state, m = one_step(state, resident, at(xs, i), rng)
      buffers = jax.tree.map(lambda b, v: jax.lax.dynamic_update_index_in_dim(b, v, i, 0), buffers, m)
      return state, buffers

    return jax.lax.fori_loop(0, n, body, (state, buffers))

  rep = parallel.replicated(mesh)
  return jax.jit(run, in_shardings=(rep, rep, stacked_sharding(mesh), rep, rep),
                 out_shardings=(rep, rep), donate_argnums=0)


def dispatch_length(step: int, k: int, stop: int, every=()) -> int:
  """Steps in the dispatch that starts after `step` steps: up to the next multiple of k, cut
  at `stop` and at each multiple of every interval in `every` (evaluation, checkpoints).

  Dispatches lie on a fixed grid of step numbers, so a run resumed from a checkpoint
  (always a dispatch boundary) dispatches exactly as the uninterrupted run did.
  """
  end = min(stop, (step // k + 1) * k)
  for e in every:
    end = min(end, (step // e + 1) * e)
  return end - step
