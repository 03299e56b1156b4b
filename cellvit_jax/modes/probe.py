"""mode=probe: a frozen backbone's features, classified by a linear probe, kNN or SimpleShot.

    python -m cellvit_jax.main --config=configs/fm.py:phikon,probe --config.fm.weights=DIR
    ... --config.probe.method=knn --config.probe.shots=4 --config.probe.episodes=10
    python -m cellvit_jax.main --config=configs/customvit.py --config.mode=probe \
        --config.probe.run=runs/customvit          # a finished run's penultimate features

The backbone (the foundation model of config.fm, or with config.probe.run the finished run
in that workdir, whose features are its classifier's input: penultimate.py) runs once per
image: features of the FlagLimit training subset, the val and the test split are computed
once (FM features cached on disk: feature_cache.py).  config.probe.method then classifies
them: 'logistic' (logistic.py, L-BFGS, L2 chosen on val), 'knn' (knn.py, cosine, k chosen
on val) or 'simpleshot' (simpleshot.py).  config.probe.shots=N > 0 repeats this over
config.probe.episodes episodes of N training examples per class (few_shot.py) and reports
the mean and a 95% interval over episodes.  Writes results.json (the shape train.py
writes, plus the probe's choices and timings); the full-data logistic probe of an FM also
writes probe_head.npz: the head with the feature standardisation folded in, so
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
from cellvit_jax.engine import knn, logistic, simpleshot
from cellvit_jax.models.fm import foundation
from cellvit_jax.models.fm import presets as fm_presets
from cellvit_jax.models.fm import weights as fm_weights
from cellvit_jax.modes import feature_cache, few_shot, finetune, finished_run, penultimate
from cellvit_jax.modes import probe_head, train
from cellvit_jax.ops import normalize
from cellvit_jax.runs import lock as workdir_lock
from cellvit_jax.runs import record as results_lib
from cellvit_jax.runs import sealed_test
from cellvit_jax.runs import test_predictions
from cellvit_jax.runs import workdir as workdir_lib

METHODS = ("logistic", "knn", "simpleshot")
# A few-shot logistic probe standardises with each feature's sd floored at this fraction of
# the mean sd: with a handful of examples a feature can be (nearly) constant, and dividing
# by its sd would give it an unbounded weight on val and test.
FEW_SHOT_MIN_STD_RATIO = 0.1


def feature_extractor(model, params, mesh, batch_size: int):
  """`images uint8 (N, H, W, 3) -> float32 features (N, D)`, in fixed-shape sharded batches."""
  return batched_extractor(
      lambda p, x: model.apply({"params": p}, normalize.to_float(x)), params, mesh, batch_size)


def batched_extractor(features_fn, params, mesh, batch_size: int):
  """`features_fn(params, uint8 batch) -> (B, D)` applied in fixed-shape sharded batches."""
  rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  fn = jax.jit(lambda p, x, mask: (features_fn(p, x), mask),
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


def _scored(preds, y, class_names, intervals: bool = True):
  result = metrics.from_confusion(metrics.confusion(y, preds, len(class_names)), class_names)
  if intervals:  # an episode's interval is not reported: the spread over episodes is
    result.update(bootstrap.intervals(y, preds, len(class_names)))
  return result


def check_probe(config) -> dict:
  """config.probe resolved: method, shots, episodes, k grid and run, or a clear error."""
  p = config.probe
  method = str(p.method)
  if method not in METHODS:
    raise ValueError(f"config.probe.method={method!r} is not one of {', '.join(METHODS)}; "
                     "pass e.g. --config.probe.method=knn")
  for key in ("shots", "episodes"):
    if isinstance(p[key], bool) or not isinstance(p[key], (int, np.integer)):
      raise ValueError(f"config.probe.{key}={p[key]!r} must be an integer; "
                       f"pass e.g. --config.probe.{key}=4")
  shots, episodes = int(p.shots), int(p.episodes)
  if shots < 0:
    raise ValueError(f"config.probe.shots={shots} must be >= 0 (0: the whole FlagLimit subset, "
                     "N: N per class per episode); pass e.g. --config.probe.shots=4")
  if shots > int(config.dataset.flaglimit):
    raise ValueError(f"config.probe.shots={shots} exceeds config.dataset.flaglimit="
                     f"{config.dataset.flaglimit}, the most training examples a class has; pass "
                     f"--config.probe.shots={config.dataset.flaglimit} or less")
  if shots and episodes < 1:
    raise ValueError(f"config.probe.episodes={episodes} must be >= 1 with config.probe.shots="
                     f"{shots}; pass e.g. --config.probe.episodes=10")
  try:
    k_grid = tuple(int(k) for k in p.knn_k_grid)
  except (TypeError, ValueError):
    k_grid = ()
  if not k_grid or any(k < 1 for k in k_grid) or any(
      float(k) != float(v) for k, v in zip(k_grid, p.knn_k_grid)):
    raise ValueError(f"config.probe.knn_k_grid={tuple(p.knn_k_grid)!r} must be a non-empty "
                     "sequence of integers >= 1; pass e.g. --config.probe.knn_k_grid='(1,5,20)'")
  return {"method": method, "shots": shots, "episodes": episodes if shots else 1,
          "k_grid": k_grid, "run": str(p.run)}


def check_config(config, mesh, settings=None):
  """Everything checkable before a file is written or data is built: (FM model or None,
  finished run or None, L2 grid). `settings`: check_probe's, computed here when not given
  (a study checks each row this way)."""
  settings = settings or check_probe(config)
  sealed_test.check(config)
  model = run = None
  if settings["run"]:
    run = finished_run.load_run(settings["run"], mesh=mesh)  # names the workdir if it is none
    if run.config.dataset.name != config.dataset.name:
      raise ValueError(
          f"config.probe.run={settings['run']!r} was trained on dataset "
          f"{run.config.dataset.name!r}, not config.dataset.name={config.dataset.name!r}; pass "
          f"--config.dataset.name={run.config.dataset.name} (and its data_dir and FlagLimit)")
    if config.evaluate_test and not sealed_test.run_reads_test(run.config.to_dict()):
      raise ValueError(
          f"config.probe.run={settings['run']!r} is a screening run (its config.evaluate_test "
          "is False), and a probe of its features with config.evaluate_test=True would read "
          "test of a model chosen on val only; pass --config.evaluate_test=false (val only), or "
          "probe a final run (trained with --config.evaluate_test=true)")
    parallel.check_batch_size(config.train.eval_batch_size, mesh, "config.train.eval_batch_size")
  else:
    model = foundation.build(config.fm, 0, config.model.dtype)  # preset, weights, input size
    parallel.check_batch_size(config.fm.feature_batch_size, mesh,
                              "config.fm.feature_batch_size")
  flaglimit.select([0], config.dataset.flaglimit, config.seed)
  datasets.synthetic_spec(config.dataset)
  datasets.check_available(config.dataset.name, config.dataset.data_dir)
  grid = tuple(float(v) for v in config.fm.probe_l2_grid)
  if not grid or any(not v >= 0 for v in grid):
    raise ValueError(f"config.fm.probe_l2_grid={tuple(config.fm.probe_l2_grid)} must be a "
                     "non-empty sequence of L2 strengths >= 0")
  return model, run, grid


def classify(settings, grid, max_steps, train, val, test, class_names, few_shot: bool):
  """Fits config.probe.method on `train` ((x, y)), chooses its setting on `val`; returns
  (val metrics, test metrics, the choice as results fields, logistic head or None, test
  predictions). Full-data metrics carry 95% bootstrap intervals (bootstrap.intervals).
  `test` None (a screening run): the test metrics and predictions are None."""
  (x_tr, y_tr), (x_val, y_val) = train, val
  scored = {"val": (x_val, y_val)} if test is None else {"val": (x_val, y_val), "test": test}
  num_classes = len(class_names)
  method = settings["method"]
  head = None
  if method == "logistic":
    mean, std = logistic.standardize_stats(
        x_tr, min_std_ratio=FEW_SHOT_MIN_STD_RATIO if few_shot else 0.0)
    z = lambda x: (x - mean) / std
    params, l2, scores = logistic.fit_with_validation(
        z(x_tr), y_tr, z(x_val), y_val, num_classes, grid, max_steps)
    predict = lambda x: logistic.predict(params, z(x))
    choice = {"l2": l2, "val_accuracy_by_l2": {str(k): v for k, v in scores.items()}}
    head = (params, mean, std)
  elif method == "knn":
    k, scores = knn.fit_with_validation(x_tr, y_tr, x_val, y_val, num_classes,
                                        settings["k_grid"])
    predict = lambda x: knn.predict(x_tr, y_tr, x, num_classes, [k])[k]
    choice = {"k": k, "val_accuracy_by_k": {str(kk): v for kk, v in scores.items()}}
  else:
    params = simpleshot.fit(x_tr, y_tr, num_classes)
    predict = lambda x: simpleshot.predict(params, x)
    choice = {}
  preds = {role: predict(x) for role, (x, _) in scored.items()}
  metrics_of = {role: _scored(preds[role], y, class_names, not few_shot)
                for role, (_, y) in scored.items()}
  return metrics_of["val"], metrics_of.get("test"), choice, head, preds.get("test")


def _episode_means(per_episode, split, confusions, class_names):
  """The split's metrics record over episodes: the mean of each scalar (and of each class's
  recall), the confusion matrices summed."""
  out = metrics.from_confusion(np.sum(confusions, axis=0), class_names)
  for m in few_shot.SCALARS:
    out[m] = float(np.mean([e[split][m] for e in per_episode]))
  for name in class_names:
    recalls = [e[split]["per_class_recall"][name] for e in per_episode]
    out["per_class_recall"][name] = (None if any(r is None for r in recalls)
                                     else float(np.mean(recalls)))
  out["num_examples"] //= len(per_episode)  # the split's size, not the sum over episodes
  out["episodes"] = len(per_episode)
  return out


def _fm_backbone(config, model, mesh):
  """(extract(images) -> features, cache key(split, images, labels), results fields, loaded):
  the FM of config.fm, weights read on the first cache miss."""
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

  def cache_key(dataset_name, split, images, labels):
    return feature_cache.key(config.fm.preset, model, ckpt, dataset_name, split, images, labels)

  fields = dict(
      model=config.fm.preset,
      num_params=int(sum(np.prod(v.shape) for v in jax.tree.leaves(
          foundation.backbone_abstract(model)))),
      weights={"directory": ckpt.directory, "sha256": fm_weights.weights_hash(ckpt),
               "architecture": ckpt.describe()},
      input_size=model.input_size, resize_method=model.resize_method, feature=model.feature)
  return extract, cache_key, fields, loaded


def _run_backbone(config, run, mesh):
  """The same for a finished run's penultimate features (not cached: a task model is cheap)."""
  extract = batched_extractor(lambda state, x: penultimate.features(run, state, x), run.state,
                              mesh, config.train.eval_batch_size)
  fields = dict(
      model=run.config.model.name,
      num_params=int(sum(np.prod(v.shape) for v in jax.tree.leaves(run.state.params))),
      backbone_run={"workdir": run.workdir, "step": run.step, "model": run.config.model.name},
      input_size=run.input_size)
  return extract, None, fields, {}


@workdir_lock.releases_own_locks
def train_probe(config, workdir: str) -> dict:
  config = train.resolved(config)  # config.json records the dtype computed in
  mesh = parallel.make_mesh()
  settings = check_probe(config)
  model, run, grid = check_config(config, mesh, settings)
  method, shots = settings["method"], settings["shots"]
  writes_head = method == "logistic" and not shots and run is None
  workdir = workdir_lib.prepare(workdir, config.to_dict())
  results_path = os.path.join(workdir, "results.json")
  if os.path.exists(results_path) and (
      not writes_head or os.path.exists(os.path.join(workdir, probe_head.HEAD_FILE))):
    logging.info("%s already holds a finished probe; not refitting.", workdir)
    with open(results_path) as f:
      return json.load(f)
  dataset = datasets.open_configured(config.dataset, log=logging.info)
  datasets.refuse_shared_specimens(dataset, config.dataset.allow_shared_specimens)
  datasets.refuse_unusable_classes(dataset, config.dataset.train_split)
  if run is not None and (tuple(run.dataset.class_names) != tuple(dataset.class_names)
                          or run.dataset.image_size != dataset.image_size):
    raise ValueError(f"config.probe.run={settings['run']!r} was trained on classes "
                     f"{list(run.dataset.class_names)} of {run.dataset.image_size}px patches, "
                     f"config.dataset holds {list(dataset.class_names)} of {dataset.image_size}px;"
                     " pass the run's dataset settings (its config.json)")
  extract, cache_key, backbone_fields, loaded = (
      _fm_backbone(config, model, mesh) if run is None else _run_backbone(config, run, mesh))

  subset, counts = flaglimit.training_subset(dataset, config.dataset, config.seed,
                                             log=logging.info)
  if shots:
    few_shot.check_shots(shots, counts, dataset.class_names)
  splits = {"train": (config.dataset.train_split, subset)}
  # A screening probe (config.evaluate_test False) never loads the test split.
  for role in ("eval", "test") if config.evaluate_test else ("eval",):
    name = config.dataset[f"{role}_split"]
    splits[role] = (name, np.arange(len(dataset.labels(name))))
  cache = feature_cache.FeatureCache(feature_cache.directory(config.fm))
  feats, cache_info, feature_seconds = {}, {}, {}
  for role, (split, indices) in splits.items():
    images, labels = pipeline.load_arrays(dataset.source(split), indices)
    if len(labels) == 0:
      raise ValueError(f"split {split!r} of dataset {dataset.name!r} is empty")
    t = time.perf_counter()
    if cache_key is None:
      x, hit, path = extract(images), False, None
    else:
      key = cache_key(dataset.name, split, images, labels)
      (x, hit), path = cache.get_or_compute(key, lambda: extract(images)), cache.path(key)
    feature_seconds[role] = time.perf_counter() - t
    feats[role] = (x, labels)
    cache_info[role] = {"split": split, "hit": hit, "path": path}
    logging.info("%s features (%s, %d x %d): cache %s, %.1f s", role, split, *x.shape,
                 "hit" if hit else "miss", feature_seconds[role])

  t = time.perf_counter()
  (x_tr, y_tr) = feats["train"]
  fit = lambda train_xy, few: classify(settings, grid, config.fm.probe_max_steps, train_xy,
                                       feats["eval"], feats.get("test"), dataset.class_names, few)
  fields = {}
  if not shots:
    val, test, choice, head, test_preds = fit((x_tr, y_tr), False)
    fields.update(choice)
  else:
    roles = ("val", "test") if "test" in feats else ("val",)
    per_episode, confusions = [], {role: [] for role in roles}
    for episode in range(settings["episodes"]):
      pick = few_shot.sample(y_tr, shots, dataset.num_classes, config.seed, episode)
      val_e, test_e, choice, _, _ = fit((x_tr[pick], y_tr[pick]), True)
      scores = {"val": val_e, "test": test_e}
      per_episode.append({"episode": episode, **choice,
                          **{role: scores[role] for role in roles}})
      for role in roles:
        confusions[role].append(scores[role]["confusion_matrix"])
      logging.info("probe episode %d: %d-shot %s %s accuracy %.4f", episode, shots, method,
                   roles[-1], scores[roles[-1]]["accuracy"])
    val, test = (_episode_means(per_episode, role, confusions[role], dataset.class_names)
                 if role in roles else None for role in ("val", "test"))
    for e in per_episode:  # the per-episode record: scalars only (the sums are above)
      for role in roles:
        e[role] = {m: e[role][m] for m in few_shot.SCALARS}
    fields["few_shot"] = {
        "shots": shots, "episodes": settings["episodes"],
        "interval": "95% t-interval of the mean over episodes",
        **{role: few_shot.summary(per_episode, role) for role in roles},
        "per_episode": per_episode}
    counts = [shots] * dataset.num_classes
  head_seconds = time.perf_counter() - t
  reported = ("test", test) if test is not None else ("val", val)
  logging.info("probe (%s): %s accuracy %.4f", method, reported[0], reported[1]["accuracy"])

  if writes_head:
    # The standardisation folded into the head: logits = x @ (W / std) + (b - (mean / std) @ W).
    params, mean, std = head
    w, b = (np.asarray(a, np.float64) for a in params)
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    kernel, bias = w / std[:, None], b - (mean / std) @ w
    backbone_fields["num_params"] += int(kernel.size + bias.size)
  results = results_lib.results_record(
      config.to_dict(), dataset, counts, mesh, test, val, workdir, mode="probe",
      **backbone_fields, feature_dim=int(x_tr.shape[1]), method=method, **fields,
      cache=cache_info,
      seconds={"load_weights": loaded.get("seconds", 0.0), "features": feature_seconds,
               "head": head_seconds},
      train_images_per_sec=None, **sealed_test.read_fields(test is not None))
  if jax.process_index() == 0:
    if writes_head:
      probe_head.save(workdir, kernel, bias, fields["l2"])
    if not shots and test is not None:  # episodes have no single set of predictions to pair
      test_predictions.save(workdir, dataset.name, splits["test"][0], feats["test"][1],
                            test_preds, dataset.class_names)
    atomic_files.write_json(workdir, "results.json", results)
  return results


def _describe(results) -> str:
  fs = results.get("few_shot")
  choice = (f"L2 {results['l2']:g} chosen on val" if "l2" in results
            else f"k={results['k']} chosen on val" if "k" in results else "nearest class mean")
  if fs:
    split = "test" if "test" in fs else "val"
    acc = fs[split]["accuracy"]
    ci = ("" if acc["low"] is None else f", 95% interval [{acc['low']:.4f}, {acc['high']:.4f}]")
    return (f"probe ({results['method']}, {fs['shots']}-shot, {fs['episodes']} episodes): "
            f"mean {split} accuracy {acc['mean']:.4f}{ci}")
  return f"probe ({results.get('method', 'logistic')}): {choice}"


def run_mode(config, workdir: str = ""):
  if config.probe.run:
    default_workdir = os.path.join(
        "runs", f"{os.path.basename(os.path.normpath(config.probe.run))}_probe")
  else:
    finetune.require_fm(config)
    fm_presets.get(config.fm.preset)
    default_workdir = os.path.join("runs", f"{config.fm.preset}_probe")
  results = train_probe(config, workdir or default_workdir)
  print("\n" + results_lib.summary_table(results))
  print(_describe(results) + "; features "
        + ", ".join(f"{r} {'cached' if c['hit'] else 'computed'}"
                    for r, c in results["cache"].items()))
  return results
