"""Several train steps per dispatch: config.train.steps_per_dispatch = k.

A small model on 40x40 patches finishes a step on an accelerator sooner than the host can
launch the next one; k steps in one call pay the launch (and the host's batch handling) once.
The per-step rng stays fold_in(rng, step), taken inside the call from state.step, and every
step's metrics come back for logging, so a run logs, evaluates and checkpoints as with k = 1.

Which program runs a dispatch of n steps:
- n == 1, and every dispatch when k == 1: one step with no loop around it. Streamed batches
  go through the very jitted step of steps.make_steps (the loop before this module existed,
  bit for bit); resident data (on_device.py) adds only the on-device gather in front of it.
- n == k > 1 on GPU/TPU (`fuses()`): one program, a lax.scan over k steps (compile time about
  one step's). With resident data it reads its k rows of positions from the chunk already on
  the device, as the single steps do.
- n == k > 1 on CPU: the single-step program k times. A fused program cannot win there:
  XLA:CPU rewrites convolutions into the layout its fast (Eigen) kernels take only in the
  entry computation (ConvCanonicalization walks module->entry_computation()), so the backward
  convolutions in a loop body run as naive loops (a ResNet-18 step at batch 8: 1.4 s plain,
  13-29 s inside a one-step fori_loop, benchmarks/FINDINGS.md), and unrolling the k steps into
  the entry computation costs k times one step's compile time (benchmarks/multistep_compile.py).
  A step on CPU outlasts its launch, so k single calls lose nothing, and the bits are k = 1's.
- 1 < n < k (a dispatch cut at an evaluation, checkpoint or the end): n single steps, so at
  most two programs are ever compiled.
The train loop calls StepRunner.run: with resident data its steps read their positions from a
chunk of many steps' positions already on the device (index_stream.IndexBatches) and fold the
rng inside the program, so the host's work per dispatch is one call.
"""
import concurrent.futures
import logging

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from cellvit_jax import parallel
from cellvit_jax.data import on_device


# "auto": one step per call on CPU, where a step outlasts its launch (and k > 1 runs the same
# single-step program k times anyway); 16 on accelerators, where a small model's step is
# shorter than the host's launch (our choice; not yet measured on a GPU).
AUTO_STEPS_PER_DISPATCH = {"cpu": 1}
AUTO_ACCELERATOR_STEPS = 16


def check_steps_per_dispatch(k):
  """One-line error for config.train.steps_per_dispatch: "auto" or an integer >= 1."""
  resolve_steps_per_dispatch(k, "cpu")


def resolve_steps_per_dispatch(k, backend: str = "") -> int:
  """config.train.steps_per_dispatch -> the k this backend runs ("auto": see above)."""
  if isinstance(k, str) and k.strip().lower() == "auto":
    backend = backend or jax.default_backend()
    return AUTO_STEPS_PER_DISPATCH.get(backend, AUTO_ACCELERATOR_STEPS)
  if isinstance(k, str) and k.strip().isdigit():  # from the command line into a str field
    k = int(k)
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"config.train.steps_per_dispatch={k!r} must be 'auto' or an integer >= 1 "
                     "(train steps per jitted call), e.g. 1 on CPU or 16 on a GPU")
  return int(k)


def fuses(backend: str = "") -> bool:
  """Whether a full k-step dispatch is one lax.scan program (GPU/TPU) rather than the
  single-step program called k times (CPU; see the module docstring)."""
  return (backend or jax.default_backend()) != "cpu"


def stacked_sharding(mesh) -> NamedSharding:
  """(steps, batch, ...) arrays: the step axis whole, the batch axis split over 'data'."""
  return NamedSharding(mesh, P(None, parallel.DATA_AXIS))


def stack_batches(batches, mesh) -> dict:
  """Host-local batches of one dispatch -> global (len(batches), global batch, ...) arrays."""
  sharding = stacked_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.stack([b[k] for b in batches]))
          for k in batches[0]}


def make_multi_step(pure_step, mesh, k: int, unroll: bool = False):
  """Jits `(state, resident_data, xs, rng) -> (state, (metrics of step 1, ..., of step k))`:
  k steps of the pure `pure_step` (steps.make_train_step), step i on xs[i] with
  fold_in(rng, state.step). xs: stack_batches of {'image', 'label'} or of {'index'} into
  resident_data (on_device.place; {} when streaming). unroll: the k steps written out in the
  entry computation instead of a lax.scan (benchmarks compare the two)."""

  def one_step(state, resident_data, batch, rng):
    batch = on_device.gather(resident_data, batch, mesh)
    return pure_step(state, batch, jax.random.fold_in(rng, state.step))

  def run(state, resident_data, xs, rng):
    if unroll:
      metrics = []
      for i in range(k):
        state, m = one_step(state, resident_data, jax.tree.map(lambda x: x[i], xs), rng)
        metrics.append(m)
      return state, tuple(metrics)
    state, ys = jax.lax.scan(lambda s, x: one_step(s, resident_data, x, rng), state, xs)
    return state, tuple(jax.tree.map(lambda y: y[i], ys) for i in range(k))

  rep = parallel.replicated(mesh)
  return jax.jit(run, in_shardings=(rep, rep, stacked_sharding(mesh), rep),
                 out_shardings=(rep, rep), donate_argnums=0)


class StepRunner:
  """`dispatcher(state, batches, rng, step) -> (state, [metrics per step])`: runs the
  len(batches) steps that start after `step` steps (see the module docstring for how);
  `dispatcher.run(state, train_iter, n, rng, step)`: the same for the next n batches of the
  train loop's iterator.

  train_step: the jitted single step of steps.make_steps; pure_step: the same step unjitted
  (steps.make_train_step); resident_data: on_device.place(...) when batches are {'index'}
  positions, else None; fuse: whether a full k-step dispatch is one program (None: fuses()).

  With resident data and an index_stream.IndexBatches iterator, run() keeps the positions of
  the next `chunk_steps` (at least k) steps on the device (one transfer per chunk) and each
  step picks its row by state.step and folds the rng inside the program, so a dispatch costs
  the host one call and no transfer. resident_data may be on_device.shapes(...) at first:
  compile_ahead() then compiles the full dispatch's program while the caller loads the subset,
  which it hands over with hold() before the first run().
  """

  def __init__(self, train_step, pure_step, mesh, steps_per_dispatch: int, resident_data=None,
               chunk_steps: int = 256, fuse=None):
    self._mesh, self._k, self._resident = mesh, steps_per_dispatch, resident_data
    self._fuse = steps_per_dispatch > 1 and (fuses() if fuse is None else fuse)
    self._train_step = train_step
    rep = parallel.replicated(mesh)
    if resident_data is not None:
      self._train_step = jax.jit(
          lambda state, data, batch, rng: pure_step(state, on_device.gather(data, batch, mesh),
                                                    rng),
          in_shardings=(rep, rep, parallel.batch_sharding(mesh), rep), out_shardings=(rep, rep),
          donate_argnums=0)

      def chunk_step(state, data, chunk, chunk_start, rng):
        row = jax.lax.dynamic_index_in_dim(chunk, state.step - chunk_start, keepdims=False)
        batch = on_device.gather(data, {"index": row}, mesh)
        return pure_step(state, batch, jax.random.fold_in(rng, state.step))

      def chunk_steps_scan(state, data, chunk, chunk_start, rng):
        state, ys = jax.lax.scan(lambda s, _: chunk_step(s, data, chunk, chunk_start, rng),
                                 state, length=steps_per_dispatch)
        return state, tuple(jax.tree.map(lambda y: y[i], ys) for i in range(steps_per_dispatch))

      chunk_shardings = (rep, rep, stacked_sharding(mesh), rep, rep)
      self._chunk_step = jax.jit(chunk_step, in_shardings=chunk_shardings,
                                 out_shardings=(rep, rep), donate_argnums=0)
      if self._fuse:
        self._chunk_multi_step = jax.jit(chunk_steps_scan, in_shardings=chunk_shardings,
                                         out_shardings=(rep, rep), donate_argnums=0)
    self._chunk_steps = max(chunk_steps, steps_per_dispatch)
    self._chunk, self._chunk_range = None, (0, 0)
    self._ahead = {}  # jitted program -> Future of its compiled executable (compile_ahead)
    self._multi_step = None
    if self._fuse:
      self._multi_step = make_multi_step(pure_step, mesh, steps_per_dispatch)

  def _single(self, state, batch, rng):
    batch = parallel.shard_batch(batch, self._mesh)
    if self._resident is None:
      return self._train_step(state, batch, rng)
    return self._train_step(state, self._resident, batch, rng)

  def __call__(self, state, batches, rng, step: int):
    if len(batches) == self._k and self._fuse:
      return self._multi_step(state, self._resident or {}, stack_batches(batches, self._mesh), rng)
    metrics = []
    for i, batch in enumerate(batches):
      state, m = self._single(state, batch, jax.random.fold_in(rng, step + i))
      metrics.append(m)
    return state, metrics

  def hold(self, resident_data):
    """The loaded training subset, in place of the on_device.shapes given at construction."""
    self._resident = resident_data

  def compile_ahead(self, state, global_batch: int, rng):
    """Starts compiling, in a background thread, the program run() uses for a full dispatch
    (resident data only): `state` may be its shapes (state.build_state(abstract=True)).
    XLA compiles without the GIL, so this overlaps the caller's loading and state creation;
    run() waits for it at the program's first call."""
    if self._resident is None:
      return
    fn = self._chunk_multi_step if self._fuse else self._chunk_step
    rep = parallel.replicated(self._mesh)
    chunk = (jax.ShapeDtypeStruct((self._chunk_steps, global_batch), np.int32,
                                  sharding=stacked_sharding(self._mesh)),
             jax.ShapeDtypeStruct((), np.int32, sharding=rep))
    resident = self._resident
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="compile_ahead")
    self._ahead[fn] = pool.submit(lambda: fn.lower(state, resident, *chunk, rng).compile())
    pool.shutdown(wait=False)

  def _call(self, fn, *args):
    """fn(*args), through its executable from compile_ahead when there is one."""
    future = self._ahead.get(fn)
    if future is None:
      return fn(*args)
    try:
      return future.result()(*args)
    except (TypeError, ValueError) as e:  # arguments not as foreseen: checked before running
      logging.warning("The program compiled ahead does not take these arguments (%s); "
                      "compiling it again.", e)
      del self._ahead[fn]
      return fn(*args)

  def _hold_chunk(self, train_iter, step: int, n: int):
    """Positions of steps step..step+n-1 on the device, loading the next chunk_steps steps'
    (one transfer) when the chunk held does not cover them."""
    first, stop = self._chunk_range
    if not (first <= step and step + n <= stop):
      local = train_iter.positions(step, self._chunk_steps)
      self._chunk = (jax.make_array_from_process_local_data(stacked_sharding(self._mesh), local),
                     jax.device_put(np.int32(step), parallel.replicated(self._mesh)))
      self._chunk_range = (step, step + self._chunk_steps)

  def run(self, state, train_iter, n: int, rng, step: int):
    """The next n steps on the next n batches of `train_iter`, whose next batch is step's."""
    if self._resident is None or not hasattr(train_iter, "positions"):
      return self(state, [next(train_iter) for _ in range(n)], rng, step)
    if train_iter.next_index != step:
      raise ValueError(f"the index stream is at batch {train_iter.next_index}, the state at "
                       f"step {step}; they must advance together")
    if n == self._k and self._fuse:
      self._hold_chunk(train_iter, step, n)
      state, metrics = self._call(self._chunk_multi_step, state, self._resident, *self._chunk,
                                  rng)
      metrics = list(metrics)
    else:
      metrics = []
      for s in range(step, step + n):
        self._hold_chunk(train_iter, s, 1)
        state, m = self._call(self._chunk_step, state, self._resident, *self._chunk, rng)
        metrics.append(m)
    train_iter.advance(n)
    return state, metrics


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
