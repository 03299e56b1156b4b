"""Training and evaluation of a model: `train_and_evaluate(config, workdir)`.

The same loop fine-tunes the foundation models (mode=finetune): models.from_config builds
them and models.with_pretrained loads their weights into a fresh state; what differs in
training (input normalisation, weight-decay mask, layer-wise lr) comes with the model
(models/interface.py).

Reads top to bottom: data -> FlagLimit subset -> model and optimiser -> resume from the
latest checkpoint if any -> train loop with periodic validation and checkpoints -> final
val and (only with config.evaluate_test: runs/sealed_test.py) test evaluation, with 95%
bootstrap intervals -> results.json and a printed summary.
"""
import json
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from cellvit_jax import atomic_files, models, parallel
from cellvit_jax.data import datasets, flaglimit, index_stream, on_device, pipeline
from cellvit_jax.engine import evaluation, multistep, optimizer, preemption, steps, train_length
from cellvit_jax.engine import state as state_lib
from cellvit_jax.models import dtypes
from cellvit_jax.runs import checkpoint, metric_writers, test_predictions
from cellvit_jax.runs import lock as workdir_lock
from cellvit_jax.runs import record as results_lib
from cellvit_jax.runs import sealed_test
from cellvit_jax.runs import workdir as workdir_lib


# The metrics.jsonl fields of an evaluation; the bootstrap intervals of a final one too.
_LOGGED = ("loss", "accuracy", "balanced_accuracy", "macro_f1")


def _logged(split_metrics: dict) -> dict:
  return {k: v for k, v in split_metrics.items() if k in _LOGGED or k.endswith("_ci95")}


def _check_finite(first_step, per_step_metrics):
  """Raises at the first step (numbered from 1) whose loss or gradient norm is not finite."""
  for i, m in enumerate(per_step_metrics):
    bad = {k: float(m[k]) for k in ("loss", "grad_norm") if not math.isfinite(float(m[k]))}
    if bad:
      raise FloatingPointError(
          f"non-finite {bad} at training step {first_step + i}; nothing after the last good "
          "checkpoint was saved. Rerun the same command with a lower learning rate (e.g. "
          "--config.optim.lr=3e-4; the workdir check allows it only with a new --workdir) or "
          "a stronger gradient clip (--config.optim.grad_clip).")


# Per-step metrics (dicts of scalars on the device) stacked into one array per metric, so a log
# point fetches a few arrays rather than one scalar per metric and step (each a host sync).
_stack_metrics = jax.jit(lambda ms: {k: jnp.stack([m[k] for m in ms]) for k in ms[0]})


class _Phases:
  """Seconds of each startup phase since the previous mark (the first since `t0`)."""

  def __init__(self, t0):
    self._last, self.seconds = t0, {}

  def mark(self, name, wait_for=None):
    jax.block_until_ready(wait_for)
    now = time.perf_counter()
    self.seconds[name] = round(now - self._last, 3)
    self._last = now

  def __str__(self):
    return ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())


def _fetch_metrics(pending):
  host = jax.device_get(_stack_metrics(pending))
  return [{k: v[i] for k, v in host.items()} for i in range(len(pending))]


def _progress(total, initial, train_cfg):
  enabled = train_cfg.progress_bar and sys.stderr.isatty() and jax.process_index() == 0
  return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


def resolved(config):
  """The config a run records and uses: model.dtype "auto" replaced by the dtype this backend
  computes in, so that config.json and results.json name it (and a run moved to another
  backend is refused as a different config rather than resumed in another precision), and
  train.steps_per_dispatch "auto" by the k this backend runs (engine/multistep.py)."""
  multistep.check_steps_per_dispatch(config.train.steps_per_dispatch)
  dtype = dtypes.resolve_dtype(config.model.dtype)
  k = multistep.resolve_steps_per_dispatch(config.train.steps_per_dispatch)
  if dtype == config.model.dtype and k == config.train.steps_per_dispatch:
    return config
  config = config.copy_and_resolve_references()
  config.model.dtype = dtype
  with config.unlocked():
    del config.train["steps_per_dispatch"]  # the field's type goes from str to int
    config.train.steps_per_dispatch = k
  return config


def check_config(config, mesh):
  """Cheap checks of everything a run needs, before any file is written or data built."""
  # FMs: also reads the weights directory's config and headers.
  models.from_config(config.model, config.get("fm"), 2, config.get("finetune"))
  flaglimit.select([0], config.dataset.flaglimit, config.seed)  # type and range of FlagLimit
  steps.check_augment(config.augment)
  optimizer.check_optim(config.optim)
  multistep.check_steps_per_dispatch(config.train.steps_per_dispatch)
  on_device.check_config(config.dataset)
  sealed_test.check(config)
  datasets.synthetic_spec(config.dataset)
  datasets.check_available(config.dataset.name, config.dataset.data_dir)
  parallel.check_batch_size(config.train.batch_size, mesh)
  parallel.check_batch_size(config.train.eval_batch_size, mesh, "config.train.eval_batch_size")


@workdir_lock.releases_own_locks
def train_and_evaluate(config, workdir: str) -> dict:
  t_entry = time.perf_counter()
  config = resolved(config)
  mesh = parallel.make_mesh()
  check_config(config, mesh)
  workdir = workdir_lib.prepare(workdir, config.to_dict())
  is_main = jax.process_index() == 0
  startup = _Phases(t_entry)  # where the time to the first step goes (results.json)

  # Data: the dataset, its FlagLimit training subset, and the evaluation splits in memory.
  dataset = datasets.open_configured(config.dataset, log=logging.info)
  datasets.refuse_shared_specimens(dataset, config.dataset.allow_shared_specimens)
  datasets.refuse_unusable_classes(dataset, config.dataset.train_split)
  subset, counts = flaglimit.training_subset(dataset, config.dataset, config.seed,
                                             log=logging.info)
  startup.mark("dataset")

  # Model, optimiser and the train step, which compiles (in the background) while the state
  # initialises and the data loads.
  model = models.from_config(config.model, config.get("fm"), dataset.num_classes,
                             config.get("finetune"))
  plan = state_lib.plan(model, config.optim, config.train, len(subset))
  total, steps_per_epoch, schedule = plan.total_steps, plan.steps_per_epoch, plan.schedule
  rng = jax.random.key(config.seed)
  init_rng, step_rng = jax.random.split(rng)
  step_sections = (config.optim, config.augment, config.normalize)
  train_step, eval_step = steps.make_steps(model, schedule, mesh, *step_sections)
  pure_step = steps.make_train_step(model, schedule, *step_sections)

  def evaluate(state, images, labels, intervals):
    # Bootstrap intervals only where they are reported: the final evaluation.
    return evaluation.evaluate(eval_step, state, images, labels, config.train.eval_batch_size,
                               mesh, dataset.class_names, intervals=intervals)

  per_dispatch = config.train.steps_per_dispatch
  train_source = dataset.source(config.dataset.train_split)
  subset_bytes = len(subset) * dataset.image_size ** 2 * 3
  held_on_device = on_device.use_on_device(config.dataset.on_device, subset_bytes,
                                     config.dataset.on_device_max_mb)
  run_steps = multistep.StepRunner(
      train_step, pure_step, mesh, per_dispatch,
      on_device.shapes(len(subset), dataset.image_size, mesh) if held_on_device else None)
  ema = config.optim.ema_decay > 0
  ckpt = checkpoint.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  will_train = (ckpt.latest_step() or 0) < total
  if will_train and not getattr(model, "holds_frozen_base", False):  # (shapes load the base)
    run_steps.compile_ahead(state_lib.build_state(model, plan.tx, dataset.image_size, mesh,
                                                  abstract=True, ema=ema),
                            config.train.batch_size, step_rng)
  state = state_lib.build_state(model, plan.tx, dataset.image_size, mesh, rng=init_rng, ema=ema)
  num_params = int(sum(x.size for x in jax.tree.leaves(state.params)))
  startup.mark("state", state)
  val_images, val_labels = pipeline.load_arrays(dataset.source(config.dataset.eval_split),
                                                range(len(dataset.labels(config.dataset.eval_split))))
  startup.mark("val_arrays")

  # Training data: resident on the device(s) with grain streaming positions, or streamed.
  resident_data = None
  if held_on_device:
    resident_data = on_device.place(*pipeline.load_arrays(train_source, subset), mesh)
    run_steps.hold(resident_data)
    train_iter = index_stream.IndexBatches(len(subset), global_batch=config.train.batch_size,
                                           seed=config.seed)
  else:
    train_iter = iter(pipeline.train_dataset(
        train_source, subset, global_batch=config.train.batch_size, seed=config.seed,
        cache=config.dataset.cache, workers=config.dataset.workers))
  startup.mark("train_data", resident_data)
  logging.info("Training subset (%.1f MB of uint8 images) %s; %d step(s) per dispatch.",
               subset_bytes / 2 ** 20, "held on the device(s)" if held_on_device else
               "streamed from the host", per_dispatch)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state, train_iter)
    logging.info("Resumed from %s at step %d of %d.", ckpt.directory, int(state.step), total)
  else:  # a fresh run: foundation models start from their published weights
    state = steps.reset_ema(models.with_pretrained(config.get("fm"), model, state, mesh))
  start = int(state.step)
  startup.mark("restore_or_init")
  results_path = os.path.join(workdir, "results.json")
  if start >= total and os.path.exists(results_path):
    logging.info("%s already holds a finished run (step %d); not retraining.", workdir, start)
    ckpt.close()
    with open(results_path) as f:
      return json.load(f)
  logging.info("%s: %s parameters; %d steps (%d per epoch) at batch %d on %d device(s).",
               config.model.name, f"{num_params:,}", total, steps_per_epoch,
               config.train.batch_size, mesh.devices.size)

  writer = metric_writers.MetricWriter(workdir, enabled=is_main, resume_step=start)
  eval_every = train_length.every(config.train.eval_every_epochs, steps_per_epoch)
  ckpt_every = train_length.every(config.train.checkpoint_every_epochs, steps_per_epoch)
  log_every = max(1, config.train.log_every_steps)
  pending, window, timed_steps, timed_seconds, t_mark, val = [], [], 0, 0.0, None, None
  max_steps = config.train.max_steps_per_run
  end = min(total, start + max_steps) if max_steps > 0 else total
  bar = _progress(total, start, config.train)
  step, calls = start, 0
  first_dispatch = None  # (seconds from entry, seconds of the call): compilation, mostly
  with preemption.PreemptionWatch() as watch:
    while step < end:
      n = multistep.dispatch_length(step, per_dispatch, end, (eval_every, ckpt_every))
      t_call = time.perf_counter()
      state, m = run_steps.run(state, train_iter, n, step_rng, step)
      if first_dispatch is None:
        now = time.perf_counter()
        first_dispatch = (now - t_entry, now - t_call)
        startup.mark("first_dispatch")
        logging.info("Time to the first step: %.1f s (%s).", first_dispatch[0], startup)
      pending.extend(m)
      bar.update(n)
      done, calls = step + n, calls + 1
      # Several processes agree on a stop through a sync point that must see ids rising by
      # one: the call count (identical on every process), not the step.
      preempted = watch.should_stop(calls)
      is_eval = done % eval_every == 0 or done == total
      is_ckpt = done % ckpt_every == 0 or done == end or preempted
      # Metrics are fetched only here (no per-step host sync), and always before a
      # checkpoint, so a non-finite state is never saved as the latest.
      if done // log_every > step // log_every or is_eval or is_ckpt:
        host = _fetch_metrics(pending)
        now = time.perf_counter()
        if t_mark is not None:  # the first interval includes compilation: not timed
          timed_steps += len(host)
          timed_seconds += now - t_mark
        t_mark = now
        _check_finite(done - len(host) + 1, host)
        pending = []
        # One record per log point in this dispatch (and at its end when it evaluates or
        # checkpoints), each the mean over the steps since the previous record.
        for s, per_step in enumerate(host, start=done - len(host) + 1):
          window.append(per_step)
          if s % log_every == 0 or (s == done and (is_eval or is_ckpt)):
            scalars = {k: float(np.mean([x[k] for x in window])) for k in window[0]}
            if timed_seconds > 0:
              scalars["images_per_sec"] = timed_steps * config.train.batch_size / timed_seconds
            writer.write(s, "train", scalars)
            window, last_train = [], scalars
        bar.set_postfix(loss=f"{last_train['loss']:.3f}", acc=f"{last_train['accuracy']:.3f}")
      step = done
      if is_eval:
        val = evaluate(state, val_images, val_labels, intervals=done == total)
        writer.write(done, "val", _logged(val))
        logging.info("epoch %.1f step %d/%d: train loss %.4f acc %.4f | val acc %.4f bal-acc %.4f "
                     "F1 %.4f | %.0f images/s", done / steps_per_epoch, done, total,
                     last_train["loss"], last_train["accuracy"], val["accuracy"],
                     val["balanced_accuracy"], val["macro_f1"],
                     last_train.get("images_per_sec", 0.0))
        t_mark = time.perf_counter()  # evaluation time is not training time
      if is_ckpt:
        ckpt.save(done, state, train_iter, config.to_dict())
      if preempted:
        end = done
        logging.info("SIGTERM: saved a checkpoint at step %d of %d and stopped; rerun the same "
                     "command to continue.", done, total)
        break
  bar.close()
  ckpt.wait()
  if end < total:
    ckpt.close()
    writer.close()
    logging.info("Stopped at step %d of %d; rerun the same command to continue.", end, total)
    return {"workdir": workdir, "step": end, "total_steps": total, "finished": False}

  if val is None:  # resumed at the last step: no evaluation ran in this invocation
    val = evaluate(state, val_images, val_labels, intervals=True)
  # Test split, final state: only a run that asks for it (a screening run never loads it).
  test = None
  if config.evaluate_test:
    test_split = config.dataset.test_split
    test_images, test_labels = pipeline.load_arrays(dataset.source(test_split),
                                                    range(len(dataset.labels(test_split))))
    test_preds, test_loss = evaluation.predict(eval_step, state, test_images, test_labels,
                                               config.train.eval_batch_size, mesh)
    test = evaluation.score(test_labels, test_preds, test_loss, dataset.class_names,
                            intervals=True)
    writer.write(total, "test", _logged(test))
  writer.close()
  ckpt.close()
  images_per_sec = timed_steps * config.train.batch_size / timed_seconds if timed_seconds else None
  results = results_lib.results_record(
      config.to_dict(), dataset, counts, mesh, test, val, workdir, step=total,
      num_params=num_params, steps=total, train_images_per_sec=images_per_sec,
      compute_dtype=config.model.dtype, **sealed_test.read_fields(test is not None),
      train_data_on_device=held_on_device, steps_per_dispatch=config.train.steps_per_dispatch,
      # From entry (data, state, compilation) to the first dispatched step, and that call
      # alone; None when this invocation trained no step.
      time_to_first_step_seconds=first_dispatch and round(first_dispatch[0], 3),
      first_dispatch_seconds=first_dispatch and round(first_dispatch[1], 3),
      startup_seconds=startup.seconds if first_dispatch else None)
  if is_main:
    if test is not None:
      test_predictions.save(workdir, dataset.name, test_split, test_labels, test_preds,
                            dataset.class_names)
    atomic_files.write_json(workdir, "results.json", results)
  return results


def run_mode(config, workdir: str = ""):
  """mode=train: train_and_evaluate into `workdir` (default runs/<model name>/), then the
  summary table, or where to rerun when the invocation stopped early."""
  results = train_and_evaluate(config, workdir or os.path.join("runs", config.model.name))
  if results["finished"]:
    print("\n" + results_lib.summary_table(results))
  else:
    print(f"\nStopped at step {results['step']} of {results['total_steps']}; rerun to continue "
          f"({results['workdir']}).")
  return results
