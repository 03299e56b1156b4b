"""Foundation models end to end on tiny data and tiny random checkpoints: mode=probe and
mode=finetune through main, the feature cache, layer-wise lr decay, load_run and mode=blur
on FM runs."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cellvit_jax import bootstrap, main
from cellvit_jax.config import files as config_files
from cellvit_jax.data import pipeline
from cellvit_jax.engine import optimizer
from cellvit_jax.models.fm import foundation
from cellvit_jax.models.fm import tiny as fm_tiny
from cellvit_jax.modes import finished_run, probe, probe_head
from cellvit_jax.runs import test_predictions
from conftest import REPO, TINY_SPEC, apply_overrides, as_flags


def fm_overrides(data_dir, weights, cache_dir, **extra):
  o = {
      "dataset.name": "synthetic_cells_tiny", "dataset.data_dir": data_dir,
      "dataset.flaglimit": 32,
      **{f"dataset.synthetic.{k}": v for k, v in TINY_SPEC.items()},
      "train.batch_size": 32, "train.eval_batch_size": 64, "train.epochs": 1.0,
      "train.log_every_steps": 2, "train.progress_bar": False, "optim.lr": 1e-3,
      "fm.weights": weights, "fm.cache_dir": cache_dir, "fm.feature_batch_size": 32,
      "fm.probe_max_steps": 100,
  }
  o.update(extra)
  return o


def fm_config(spec, data_dir, weights, cache_dir, **extra):
  config = config_files.load(os.path.join(REPO, "configs", f"fm.py:{spec}"))
  return apply_overrides(config, fm_overrides(data_dir, weights, cache_dir, **extra))


def _main(args, **kw):
  env = {**os.environ, "PYTHONPATH": REPO}
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  base = tmp_path_factory.mktemp("fm_weights")
  return {p: fm_tiny.write_tiny(p, str(base / p)) for p in ("phikon", "uni", "plip")}


@pytest.fixture(scope="module")
def probe_run(tiny_data_dir, weights, tmp_path_factory):
  base = tmp_path_factory.mktemp("probe")
  workdir = str(base / "run")
  main.run(fm_config("phikon,probe", tiny_data_dir, weights["phikon"], str(base / "cache")),
           workdir)
  return workdir


@pytest.fixture(scope="module")
def finetune_run(tiny_data_dir, weights, tmp_path_factory):
  """A phikon fine-tuning run through main.run: stopped after 2 of 4 steps, then resumed.
  (The command line itself is exercised by the probe test; a second subprocess here would
  only add imports and compilations.)"""
  base = tmp_path_factory.mktemp("finetune")
  workdir = str(base / "run")
  config = lambda **o: fm_config("phikon,finetune", tiny_data_dir, weights["phikon"],
                                 str(base / "cache"), **o)
  main.run(config(**{"train.max_steps_per_run": 2}), workdir)
  from cellvit_jax.runs import checkpoint
  ckpt = checkpoint.Checkpointer(workdir)
  stopped_at = ckpt.latest_step()
  ckpt.close()
  main.run(config(), workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  return workdir, stopped_at, results


def test_probe_through_main_with_tiny_cli_checkpoint(tiny_data_dir, tmp_path):
  w = str(tmp_path / "uni weights")
  out = _main(["cellvit_jax.models.fm.tiny", "--tiny=uni", f"--output={w}"])
  assert out.returncode == 0, out.stderr
  assert sorted(os.listdir(w)) == ["config.json", "model.safetensors"]  # timm, as UNI ships
  workdir = str(tmp_path / "run")
  out = _main(["cellvit_jax.main", "--config=configs/fm.py:uni,probe", f"--workdir={workdir}",
               *as_flags(fm_overrides(tiny_data_dir, w, str(tmp_path / "cache")))])
  assert out.returncode == 0, out.stderr[-2000:]
  assert "test accuracy" in out.stdout and "features train computed" in out.stdout
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["finished"] and results["mode"] == "probe" and results["model"] == "uni"
  assert results["train_examples"] == 4 * 32 and results["feature_dim"] == 32
  assert results["l2"] in results["config"]["fm"]["probe_l2_grid"]  # chosen from the grid
  assert os.path.isfile(os.path.join(workdir, probe_head.HEAD_FILE))


def test_finetune_through_main_starts_from_weights_and_resumes(finetune_run, weights,
                                                               tiny_data_dir):
  workdir, stopped_at, results = finetune_run
  assert stopped_at == 2 and results["finished"] and results["step"] == 4
  assert results["model"] == "phikon" and results["config"]["mode"] == "finetune"
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    train_steps = [r["step"] for r in map(json.loads, f) if r["split"] == "train"]
  assert train_steps == [2, 4]  # continued from the checkpoint, not restarted
  run = finished_run.load_run(workdir)
  assert run.input_size == 32 and run.resize_method == "bilinear"
  config = fm_config("phikon,finetune", tiny_data_dir, weights["phikon"], "")
  published = foundation.pretrained_backbone(config.fm, run.model)
  diff = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                      run.state.params["backbone"], published)
  # Fine-tuned from the published weights: moved, but only by 4 small steps.
  assert 0 < max(jax.tree.leaves(diff)) < 0.02


def test_feature_cache_hit_and_invalidation(tiny_data_dir, weights, tmp_path):
  cache = str(tmp_path / "cache")
  run = lambda name, w=weights["phikon"], **o: probe.train_probe(
      fm_config("phikon,probe", tiny_data_dir, w, cache, **o), str(tmp_path / name))
  hits = lambda r: {role: c["hit"] for role, c in r["cache"].items()}
  first = run("a")
  assert hits(first) == {"train": False, "eval": False, "test": False}
  second = run("b")
  assert hits(second) == {"train": True, "eval": True, "test": True}
  assert second["test"] == first["test"] and second["l2"] == first["l2"]
  assert second["seconds"]["load_weights"] == 0.0 < first["seconds"]["load_weights"]  # not read
  other_limit = run("c", **{"dataset.flaglimit": 16})
  assert hits(other_limit) == {"train": False, "eval": True, "test": True}
  assert other_limit["train_examples"] == 64
  reseeded = fm_tiny.write_tiny("phikon", str(tmp_path / "w2"), seed=1)
  assert hits(run("d", w=reseeded)) == {"train": False, "eval": False, "test": False}
  entries = [f for _, _, fs in os.walk(cache) for f in fs]
  assert len(entries) == 7 and not any(f.startswith(".tmp") for f in entries)


def test_probe_head_reproduces_probe_metrics_through_load_run(probe_run):
  with open(os.path.join(probe_run, "results.json")) as f:
    results = json.load(f)
  run = finished_run.load_run(probe_run)
  assert (run.native_size, run.input_size) == (40, 32)
  images, labels = pipeline.load_arrays(run.dataset.source("test"),
                                        range(len(run.dataset.labels("test"))))
  preds = np.argmax(np.asarray(run.logits(images)), -1)
  assert abs(float(np.mean(preds == labels)) - results["test"]["accuracy"]) < 1e-6
  stored = test_predictions.load(probe_run)  # what a paired bootstrap reads
  np.testing.assert_array_equal(stored["labels"], labels)
  assert np.mean(stored["predictions"] == labels) == results["test"]["accuracy"]
  assert np.mean(stored["predictions"] == preds) > 0.95  # the probe's head vs the folded one
  assert results["test"]["accuracy_ci95"] == bootstrap.intervals(
      labels, stored["predictions"], len(stored["class_names"]))["accuracy_ci95"]


@pytest.mark.parametrize("which", ["probe_run", "finetune_run"])
def test_blur_mode_runs_on_fm_runs(which, request, tmp_path):
  run_dir = request.getfixturevalue(which)
  run_dir = run_dir if isinstance(run_dir, str) else run_dir[0]
  config = config_files.load(os.path.join(REPO, "configs", "blur.py"))
  config.blur.run = run_dir
  config.blur.sigmas = (0.0, 1.5)
  main.run(config, str(tmp_path / "blur"))
  with open(tmp_path / "blur" / "blur.json") as f:
    result = json.load(f)
  assert result["input_size"] == 32 and isinstance(result["post_resize"], dict)
  with open(os.path.join(run_dir, "results.json")) as f:
    test_accuracy = json.load(f)["test"]["accuracy"]
  assert abs(result["pre_resize"]["per_sigma"][0]["accuracy"] - test_accuracy) < 1e-6


def test_bf16_compute_keeps_float32_params_and_close_features(weights, tiny_data_dir):
  images = jnp.asarray(np.random.default_rng(0).random((4, 40, 40, 3), dtype=np.float32))
  out = {}
  for dtype in ("float32", "bfloat16"):
    config = fm_config("uni,finetune", tiny_data_dir, weights["uni"], "", **{"model.dtype": dtype})
    model = foundation.build(config.fm, 0, config.model.dtype)
    params = {"backbone": foundation.pretrained_backbone(config.fm, model)}
    assert {p.dtype for p in jax.tree.leaves(params)} == {np.dtype("float32")}
    out[dtype] = np.asarray(model.apply({"params": params}, images))
  assert out["bfloat16"].dtype == np.float32
  assert 0 < np.abs(out["bfloat16"] - out["float32"]).max() < 0.1


@pytest.mark.parametrize("preset", ["phikon", "uni", "plip"])
def test_layer_decay_depths_and_scales(preset, weights, tiny_data_dir):
  config = fm_config(f"{preset},finetune", tiny_data_dir, weights[preset], "",
                     **{"fm.layer_decay": 0.5})
  model = foundation.build(config.fm, 4, config.model.dtype)
  params = model.init(jax.random.key(0), jnp.zeros((1, 40, 40, 3)))["params"]
  scales = foundation.layer_decay_scales(params, 2, 0.5)
  flat = {"/".join(str(k.key) for k in path): s
          for path, s in jax.tree_util.tree_leaves_with_path(scales)}
  assert {s for k, s in flat.items() if "embeddings" in k} == {0.125}
  assert {s for k, s in flat.items() if "layer" in k and "/0/" in k} == {0.25}
  assert {s for k, s in flat.items() if "layer" in k and "/1/" in k} == {0.5}
  assert flat["head/kernel"] == 1.0
  tx = optimizer.scale_by_model_lr(model)
  ones = jax.tree.map(jnp.ones_like, params)
  scaled, _ = tx.update(ones, tx.init(params))
  assert jax.tree.map(lambda u: float(u.reshape(-1)[0]), scaled) == scales


def test_weight_decay_spares_tokens_positions_norms_and_biases(weights, tiny_data_dir):
  config = fm_config("plip,finetune", tiny_data_dir, weights["plip"], "")
  model = foundation.build(config.fm, 4, config.model.dtype)
  params = model.init(jax.random.key(0), jnp.zeros((1, 40, 40, 3)))["params"]
  flat = {"/".join(str(k.key) for k in path): m for path, m in
          jax.tree_util.tree_leaves_with_path(foundation.weight_decay_mask(params))}
  decayed = {k for k, m in flat.items() if m}
  assert "head/kernel" in decayed
  assert "backbone/vision_model/embeddings/patch_embedding/kernel" in decayed
  assert not any(s in k for k in decayed for s in ("class_embedding", "position_embedding",
                                                   "bias", "scale"))
