"""mode=probe's kNN, SimpleShot and N-shot episodes end to end on the tiny dataset: on tiny
random FM checkpoints and on a tiny trained CustomViT's penultimate features, each result
recomputed from the probe's own features with numpy references."""
import json
import os

import jax
import numpy as np
import pytest

from cellvit_jax import main
from cellvit_jax.data import datasets, flaglimit, pipeline
from cellvit_jax.models.fm import presets as fm_presets
from cellvit_jax.models.fm import tiny as fm_tiny
from cellvit_jax.modes import few_shot, finished_run, penultimate, probe
from conftest import tiny_config
from test_foundation_modes import fm_config
from test_probe_methods import _knn_reference, _simpleshot_reference


@pytest.fixture(scope="module")
def phikon(tmp_path_factory):
  return fm_tiny.write_tiny("phikon", str(tmp_path_factory.mktemp("w") / "phikon"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("cache"))


def _labels(config):
  """Training-subset, val and test labels as the probe sees them."""
  dataset = datasets.open_configured(config.dataset, log=lambda *a: None)
  subset, _ = flaglimit.training_subset(dataset, config.dataset, config.seed)
  get = lambda split, idx: pipeline.load_arrays(dataset.source(split), idx)[1]
  return (get("train", subset), get("val", np.arange(len(dataset.labels("val")))),
          get("test", np.arange(len(dataset.labels("test")))))


def _cached(results):
  return [np.load(results["cache"][r]["path"])["features"] for r in ("train", "eval", "test")]


def test_default_probe_is_the_logistic_probe(tiny_data_dir, phikon, cache, tmp_path):
  config = fm_config("phikon,probe", tiny_data_dir, phikon, cache)
  assert config.probe.method == "logistic" and config.probe.shots == 0
  r = probe.train_probe(config, str(tmp_path / "run"))
  assert r["method"] == "logistic" and "few_shot" not in r
  assert r["l2"] in config.fm.probe_l2_grid
  assert os.path.isfile(os.path.join(tmp_path, "run", "probe_head.npz"))


def test_knn_and_simpleshot_on_all_training_features(tiny_data_dir, phikon, cache, tmp_path):
  config = lambda m: fm_config("phikon,probe", tiny_data_dir, phikon, cache,
                               **{"probe.method": m, "probe.knn_k_grid": (1, 5, 20)})
  knn_r = probe.train_probe(config("knn"), str(tmp_path / "knn"))
  ss_r = probe.train_probe(config("simpleshot"), str(tmp_path / "ss"))
  (y_tr, y_val, y_te), (x_tr, x_val, x_te) = _labels(config("knn")), _cached(knn_r)
  for k, acc in knn_r["val_accuracy_by_k"].items():
    assert acc == np.mean(_knn_reference(x_tr, y_tr, x_val, int(k), 4) == y_val)
  assert knn_r["val_accuracy_by_k"][str(knn_r["k"])] == max(knn_r["val_accuracy_by_k"].values())
  assert knn_r["test"]["accuracy"] == np.mean(
      _knn_reference(x_tr, y_tr, x_te, knn_r["k"], 4) == y_te)
  assert ss_r["test"]["accuracy"] == np.mean(_simpleshot_reference(x_tr, y_tr, x_te, 4) == y_te)
  assert ss_r["cache"]["train"]["hit"]  # the same cached features serve every method
  assert not os.path.exists(os.path.join(tmp_path, "knn", "probe_head.npz"))
  with pytest.raises(ValueError, match="probe.method='knn'.*only a full-data logistic probe"):
    finished_run.load_run(str(tmp_path / "knn"))


@pytest.mark.parametrize("method,shots", [("simpleshot", 1), ("knn", 4), ("logistic", 4)])
def test_n_shot_episodes(method, shots, tiny_data_dir, phikon, cache, tmp_path):
  config = fm_config("phikon,probe", tiny_data_dir, phikon, cache, **{
      "probe.method": method, "probe.shots": shots, "probe.episodes": 3,
      "fm.probe_l2_grid": (1e-4, 1e-1)})
  r = probe.train_probe(config, str(tmp_path / "run"))
  fs = r["few_shot"]
  assert fs["shots"] == shots and len(fs["per_episode"]) == 3 and r["train_examples"] == 4 * shots
  accs = [e["test"]["accuracy"] for e in fs["per_episode"]]
  assert fs["test"]["accuracy"]["mean"] == pytest.approx(np.mean(accs)) == r["test"]["accuracy"]
  assert fs["test"]["accuracy"]["low"] <= np.mean(accs) <= fs["test"]["accuracy"]["high"]
  assert sum(map(sum, r["test"]["confusion_matrix"])) == 3 * r["test"]["num_examples"]
  (y_tr, _, y_te), (x_tr, _, x_te) = _labels(config), _cached(r)
  for e in fs["per_episode"]:
    pick = few_shot.sample(y_tr, shots, 4, config.seed, e["episode"])
    if method == "simpleshot":
      ref = _simpleshot_reference(x_tr[pick], y_tr[pick], x_te, 4)
    elif method == "knn":
      ref = _knn_reference(x_tr[pick], y_tr[pick], x_te, e["k"], 4)
      assert e["k"] in (1, 5, 10)  # the grid's k up to the 16 support features
    else:
      assert e["l2"] in (1e-4, 1e-1)
      continue
    assert e["test"]["accuracy"] == np.mean(ref == y_te)
  again = probe.train_probe(config, str(tmp_path / "again"))
  assert again["few_shot"]["per_episode"] == fs["per_episode"]  # same seed, same episodes


def test_probe_config_errors_name_the_key(tiny_data_dir, phikon, cache, tmp_path):
  cases = [({"probe.method": "svm"}, "config.probe.method='svm'"),
           ({"probe.shots": -1}, "config.probe.shots=-1"),
           ({"probe.shots": 64}, r"config.probe.shots=64 exceeds config.dataset.flaglimit=32"),
           ({"probe.shots": 2, "probe.episodes": 0}, "config.probe.episodes=0"),
           ({"probe.knn_k_grid": (0, 5)}, "config.probe.knn_k_grid"),
           ({"probe.run": str(tmp_path / "nothing")}, "holds no finished training run")]
  for overrides, message in cases:
    with pytest.raises((ValueError, FileNotFoundError), match=message):
      probe.train_probe(fm_config("phikon,probe", tiny_data_dir, phikon, cache, **overrides),
                        str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")  # refused before the workdir is written


@pytest.fixture(scope="module")
def customvit_run(tiny_data_dir, tmp_path_factory):
  from cellvit_jax.modes import train
  workdir = str(tmp_path_factory.mktemp("customvit") / "run")
  train.train_and_evaluate(tiny_config(tiny_data_dir, **{
      "train.epochs": 0.0, "train.steps": 2, "dataset.flaglimit": 32}), workdir)
  return workdir


def test_penultimate_features_are_the_heads_input(customvit_run):
  run = finished_run.load_run(customvit_run)
  images = np.random.default_rng(0).integers(0, 256, (5, 40, 40, 3), dtype=np.uint8)
  feats = np.asarray(jax.jit(lambda s, x: penultimate.features(run, s, x))(run.state, images))
  head = run.state.params["head"]
  assert feats.shape == (5, 32)
  np.testing.assert_allclose(feats @ np.asarray(head["kernel"]) + np.asarray(head["bias"]),
                             np.asarray(run.logits(images)), rtol=1e-4, atol=1e-5)


def test_few_shot_on_a_trained_customvit(customvit_run, tiny_data_dir, cache, tmp_path):
  o = {"mode": "probe", "probe.run": customvit_run, "probe.method": "simpleshot",
       "probe.shots": 4, "probe.episodes": 2, "dataset.flaglimit": 32}
  workdir = str(tmp_path / "probe")
  main.run(tiny_config(tiny_data_dir, **o), workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    r = json.load(f)
  assert r["model"] == "customvit" and r["backbone_run"]["workdir"] == customvit_run
  assert r["feature_dim"] == 32 and len(r["few_shot"]["per_episode"]) == 2
  # The per-episode accuracies from the run's own features through the numpy reference.
  config = tiny_config(tiny_data_dir, **o)
  y_tr, _, y_te = _labels(config)
  run = finished_run.load_run(customvit_run)
  dataset = datasets.open_configured(config.dataset, log=lambda *a: None)
  subset, _ = flaglimit.training_subset(dataset, config.dataset, config.seed)
  fn = jax.jit(lambda s, x: penultimate.features(run, s, x))
  feats = lambda split, idx: np.asarray(fn(run.state, pipeline.load_arrays(
      dataset.source(split), idx)[0]))
  x_tr, x_te = feats("train", subset), feats("test", np.arange(len(y_te)))
  for e in r["few_shot"]["per_episode"]:
    pick = few_shot.sample(y_tr, 4, 4, config.seed, e["episode"])
    ref = _simpleshot_reference(x_tr[pick], y_tr[pick], x_te, 4)
    assert e["test"]["accuracy"] == pytest.approx(np.mean(ref == y_te), abs=2 / len(y_te))
  other = tiny_config(tiny_data_dir, **{**o, "dataset.name": "synthetic_cells"})
  with pytest.raises(ValueError, match="pass --config.dataset.name=synthetic_cells_tiny"):
    probe.train_probe(other, str(tmp_path / "other"))


@pytest.mark.slow
@pytest.mark.parametrize("preset", fm_presets.names())
def test_every_method_and_shot_count_on_every_preset(preset, tiny_data_dir, tmp_path):
  """The issue's grid: kNN, SimpleShot and logistic, all data and N in 1, 4, 16, 64 (FlagLimit
  128 holds 128 per class), on every preset's tiny checkpoint; features computed once."""
  w = fm_tiny.write_tiny(preset, str(tmp_path / "w"))
  cache = str(tmp_path / "cache")
  for method in probe.METHODS:
    for shots in (0, 1, 4, 16, 64):
      config = fm_config(f"{preset},probe", tiny_data_dir, w, cache, **{
          "dataset.flaglimit": 128, "probe.method": method, "probe.shots": shots,
          "probe.episodes": 2, "fm.probe_l2_grid": (1e-3,), "fm.probe_max_steps": 30})
      r = probe.train_probe(config, str(tmp_path / f"{method}{shots}"))
      assert r["method"] == method and 0.0 <= r["test"]["accuracy"] <= 1.0
      assert r["train_examples"] == 4 * (shots or 128)
      if shots:
        accs = [e["test"]["accuracy"] for e in r["few_shot"]["per_episode"]]
        assert r["few_shot"]["test"]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
  assert all(c["hit"] for c in r["cache"].values())


@pytest.mark.slow
@pytest.mark.parametrize("shots", [1, 16, 64])
def test_more_shot_counts_on_a_trained_customvit(shots, customvit_run, tiny_data_dir, tmp_path):
  for method in probe.METHODS:
    r = probe.train_probe(tiny_config(tiny_data_dir, **{
        "mode": "probe", "probe.run": customvit_run, "probe.method": method, "probe.shots": shots,
        "probe.episodes": 2, "fm.probe_l2_grid": (1e-3,), "fm.probe_max_steps": 30}),
        str(tmp_path / method))
    assert r["train_examples"] == 4 * shots and len(r["few_shot"]["per_episode"]) == 2
