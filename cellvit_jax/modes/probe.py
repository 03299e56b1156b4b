"""mode=probe: a linear probe of a frozen foundation model.

    python -m cellvit_jax.main --config=configs/fm.py:phikon,probe --config.fm.weights=DIR

The backbone runs once per image: features of the FlagLimit training subset, the val and
the test split are computed once and cached on disk (feature_cache.py), then a
multinomial logistic regression (logistic.py, L-BFGS) is fitted with its L2 strength
chosen on val.  Writes results.json (the shape train.py writes, plus the probe's choices
and timings) and probe_head.npz: the head with the feature standardisation folded in, so
finished_run.load_run gives a Run whose forward is backbone -> head like a fine-tuned FM.
"""
import json
import os
import time

import jax
import numpy as np
from absl import logging

from cellvit_jax import atomic_files, bootstrap, metrics, parallel
from cellvit_jax.data import datasets, flaglimit, pipeline
from cellvit_jax.engine import logistic
from cellvit_jax.models.fm import foundation
from cellvit_jax.models.fm import presets as fm_presets
from cellvit_jax.models.fm import weights as fm_weights
from cellvit_jax.modes import feature_cache, finetune, probe_head, train
from cellvit_jax.ops import normalize
from cellvit_jax.runs import lock as workdir_lock
from cellvit_jax.runs import record as results_lib
from cellvit_jax.runs import test_predictions
from cellvit_jax.runs import workdir as workdir_lib

def feature_extractor(model, params, mesh, batch_size: int):
  """`images uint8 (N, H, W, 3) -> float32 features (N, D)`, in fixed-shape sharded batches."""
  rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  fn = jax.jit(lambda p, x, mask: (model.apply({"params": p}, normalize.to_float(x)), mask),
               in_shardings=(rep, data, data), out_shardings=rep)

  def extract(images):
    out = []
    labels = np.zeros(len(images), np.int32)
    for batch in pipeline.eval_batches(images, labels, batch_size):
      b = parallel.shard_batch({"image": batch["image"], "mask": batch["mask"]}, mesh)
      f, mask = jax.device_get(fn(params, b["image"], b["mask"]))
      out.append(np.asarray(f)[np.asarray(mask)])  # the global mask: right on every host
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

  return extract


def _metrics(params, x, y, class_names):
  preds = logistic.predict(params, x)
  result = metrics.from_confusion(metrics.confusion(y, preds, len(class_names)), class_names)
  return {**result, **bootstrap.intervals(y, preds, len(class_names))}


def check_config(config, mesh):
  """Everything checkable before a file is written or data is built."""
  model = foundation.build(config.fm, 0, config.model.dtype)  # preset, weights, input size
  flaglimit.select([0], config.dataset.flaglimit, config.seed)
  datasets.synthetic_spec(config.dataset)
  datasets.check_available(config.dataset.name, config.dataset.data_dir)
  parallel.check_batch_size(config.fm.feature_batch_size, mesh, "config.fm.feature_batch_size")
  grid = tuple(float(v) for v in config.fm.probe_l2_grid)
  if not grid or any(not v >= 0 for v in grid):
    raise ValueError(f"config.fm.probe_l2_grid={tuple(config.fm.probe_l2_grid)} must be a "
                     "non-empty sequence of L2 strengths >= 0")
  return model, grid


@workdir_lock.releases_own_locks
def train_probe(config, workdir: str) -> dict:
  config = train.resolved(config)  # config.json records the dtype computed in
  mesh = parallel.make_mesh()
  model, grid = check_config(config, mesh)
  workdir = workdir_lib.prepare(workdir, config.to_dict())
  results_path = os.path.join(workdir, "results.json")
  if os.path.exists(results_path) and os.path.exists(os.path.join(workdir, probe_head.HEAD_FILE)):
    logging.info("%s already holds a finished probe; not refitting.", workdir)
    with open(results_path) as f:
      return json.load(f)
  dataset = datasets.open_configured(config.dataset, log=logging.info)
  datasets.refuse_shared_specimens(dataset, config.dataset.allow_shared_specimens)
  datasets.refuse_unusable_classes(dataset, config.dataset.train_split)
  ckpt = foundation.checkpoint_of(config.fm)
  loaded = {}

  def extract(images):
    # The weights are read only on the first cache miss: a fully cached probe never loads them.
    if not loaded:
      t0 = time.perf_counter()
      params = parallel.replicate({"backbone": foundation.pretrained_backbone(config.fm, model)},
                                  mesh)
      loaded["fn"] = feature_extractor(model, params, mesh, config.fm.feature_batch_size)
      loaded["seconds"] = time.perf_counter() - t0
    return loaded["fn"](images)

  subset, counts = flaglimit.training_subset(dataset, config.dataset, config.seed,
                                             log=logging.info)
  splits = {"train": (config.dataset.train_split, subset)}
  for role in ("eval", "test"):
    name = config.dataset[f"{role}_split"]
    splits[role] = (name, np.arange(len(dataset.labels(name))))
  cache = feature_cache.FeatureCache(feature_cache.directory(config.fm))
  feats, cache_info, feature_seconds = {}, {}, {}
  for role, (split, indices) in splits.items():
    images, labels = pipeline.load_arrays(dataset.source(split), indices)
    if len(labels) == 0:
      raise ValueError(f"split {split!r} of dataset {dataset.name!r} is empty")
    key = feature_cache.key(config.fm.preset, model, ckpt, dataset.name, split, images, labels)
    t = time.perf_counter()
    x, hit = cache.get_or_compute(key, lambda: extract(images))
    feature_seconds[role] = time.perf_counter() - t
    feats[role] = (x, labels)
    cache_info[role] = {"split": split, "hit": hit, "path": cache.path(key)}
    logging.info("%s features (%s, %d x %d): cache %s, %.1f s", role, split, *x.shape,
                 "hit" if hit else "miss", feature_seconds[role])

  t = time.perf_counter()
  (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = feats["train"], feats["eval"], feats["test"]
  mean, std = logistic.standardize_stats(x_tr)
  z = lambda x: (x - mean) / std
  head, l2, scores = logistic.fit_with_validation(
      z(x_tr), y_tr, z(x_val), y_val, dataset.num_classes, grid, config.fm.probe_max_steps)
  head_seconds = time.perf_counter() - t
  val = _metrics(head, z(x_val), y_val, dataset.class_names)
  test = _metrics(head, z(x_te), y_te, dataset.class_names)
  logging.info("probe: L2 %g chosen on val (val accuracy by L2: %s); test accuracy %.4f", l2,
               scores, test["accuracy"])

  # The standardisation folded into the head: logits = x @ (W / std) + (b - (mean / std) @ W).
  w, b = (np.asarray(a, np.float64) for a in head)
  mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
  kernel, bias = w / std[:, None], b - (mean / std) @ w
  results = results_lib.results_record(
      config.to_dict(), dataset, counts, mesh, test, val, workdir, mode="probe",
      model=config.fm.preset,
      num_params=int(sum(np.prod(v.shape) for v in jax.tree.leaves(
          foundation.backbone_abstract(model)))) + int(kernel.size + bias.size),
      feature_dim=int(x_tr.shape[1]),
      weights={"directory": ckpt.directory, "sha256": fm_weights.weights_hash(ckpt),
               "architecture": ckpt.describe()},
      input_size=model.input_size, resize_method=model.resize_method, feature=model.feature,
      l2=l2, val_accuracy_by_l2={str(k): v for k, v in scores.items()}, cache=cache_info,
      seconds={"load_weights": loaded.get("seconds", 0.0), "features": feature_seconds,
               "head": head_seconds},
      train_images_per_sec=None)
  if jax.process_index() == 0:
    probe_head.save(workdir, kernel, bias, l2)
    test_predictions.save(workdir, dataset.name, splits["test"][0], y_te,
                          logistic.predict(head, z(x_te)), dataset.class_names)
    atomic_files.write_json(workdir, "results.json", results)
  return results


def run_mode(config, workdir: str = ""):
  finetune.require_fm(config)
  fm_presets.get(config.fm.preset)
  results = train_probe(config, workdir or os.path.join("runs", f"{config.fm.preset}_probe"))
  print("\n" + results_lib.summary_table(results))
  print(f"probe: L2 {results['l2']:g} chosen on val; features "
        + ", ".join(f"{r} {'cached' if c['hit'] else 'computed'}"
                    for r, c in results["cache"].items()))
  return results
