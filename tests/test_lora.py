"""LoRA fine-tuning (config.finetune.method='lora', models/fm/lora.py) on tiny random
checkpoints: the initial function is the base model's, the merged weights (checked against
numpy) give the unmerged forward, training touches only adapters and
head, the checkpoint holds no base weights and refuses other base weights, resume and
mode=predict."""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from cellvit_jax import main, parallel
from cellvit_jax.engine import steps
from cellvit_jax.models.fm import lora
from cellvit_jax.models.fm import tiny as fm_tiny
from cellvit_jax.modes import finished_run, predict
from cellvit_jax.runs import checkpoint
from conftest import REPO, as_flags
from test_foundation_modes import fm_config, fm_overrides

LORA = {"finetune.method": "lora", "finetune.lora_rank": 4, "finetune.lora_alpha": 8.0}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  base = tmp_path_factory.mktemp("lora_weights")
  return {p: fm_tiny.write_tiny(p, str(base / p)) for p in ("phikon", "uni", "plip")}


def _fm_cfg(preset, weights):
  return ml_collections.ConfigDict(dict(preset=preset, weights=weights, num_heads=0, input_size=0,
                                        resize_method="", feature="", layer_decay=0.75))


def _ft_cfg(**kw):
  return ml_collections.ConfigDict({"method": "lora", "lora_rank": 4, "lora_alpha": 8.0,
                                    "lora_targets": "all", **kw})


def _random_adapters(state, seed):
  """The state with every adapter factor (B too) and the head drawn at random."""
  leaves, tree = jax.tree.flatten(state.params)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  new = [0.1 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
  return state.replace(params=jax.tree.unflatten(tree, new))


def _state(model, seed=0):
  return steps.create_state(jax.random.key(seed), model, optax.adam(1e-3), 40,
                            parallel.make_mesh())


def _images(n=4, seed=1):
  return jax.random.uniform(jax.random.key(seed), (n, 40, 40, 3))


@pytest.mark.parametrize("preset", ["uni"])
def test_initial_function_is_the_base_model_exactly(preset, weights):
  model = lora.build(_fm_cfg(preset, weights[preset]), _ft_cfg(), 3)
  state = _state(model)
  head = jax.tree.map(lambda x: x + 0.3, state.params["head"])  # a non-zero head, to see logits
  state = state.replace(params={**state.params, "head": head})
  got = model.apply(steps._variables(state), _images())
  base = {"backbone": model.base.params, "head": head}
  want = model.fm.apply({"params": base}, _images())
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # A is random (not a no-op by construction), B is zero.
  for ab in jax.tree.leaves(state.params["lora"], is_leaf=lambda t: "a" in t):
    assert float(jnp.std(ab["a"])) > 0 and not np.any(np.asarray(ab["b"]))


@pytest.mark.parametrize("preset,targets", [("phikon", "query,value"), ("uni", "all"),
                                            ("plip", "self_attn/out_proj,mlp/fc2")])
def test_merged_weights_equal_the_unmerged_lora_forward(preset, targets, weights):
  model = lora.build(_fm_cfg(preset, weights[preset]), _ft_cfg(lora_targets=targets), 3)
  state = _random_adapters(_state(model), seed=2)
  merged = lora.merged_params(model, state.params, state.frozen)
  # The merged kernels, against numpy.
  for path in model.targets:
    ab = lora._get(state.params["lora"], path.removesuffix("/kernel"))
    want = np.asarray(lora._get(model.base.params, path)) + model.scale * (
        np.asarray(ab["a"], np.float64) @ np.asarray(ab["b"], np.float64))
    np.testing.assert_allclose(np.asarray(lora._get(merged["backbone"], path)), want,
                               rtol=1e-5, atol=1e-6)
  merged_out = model.fm.apply({"params": merged}, _images())
  unmerged = model.apply(steps._variables(state), _images())  # x W + (alpha / r) (x A) B
  base_out = model.fm.apply(
      {"params": {"backbone": model.base.params, "head": state.params["head"]}}, _images())
  assert float(jnp.abs(unmerged - base_out).max()) > 1e-3  # the adapters change the output
  np.testing.assert_allclose(np.asarray(merged_out), np.asarray(unmerged), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key,value,match", [
    ("method", "qlora", "config.finetune.method='qlora'"),
    ("lora_rank", 0, "config.finetune.lora_rank=0"),
    ("lora_alpha", -1.0, "config.finetune.lora_alpha=-1.0"),
    ("lora_targets", "attention/qkv", "'attention/qkv' names no Dense kernel"),
    ("lora_targets", "", "lora_targets is empty"),
])
def test_bad_lora_config_is_refused_naming_the_key(key, value, match, weights):
  with pytest.raises(ValueError, match=match):
    lora.build(_fm_cfg("phikon", weights["phikon"]), _ft_cfg(**{key: value}), 3)


def test_lora_needs_a_foundation_model_and_no_ema(tiny_data_dir, weights, tmp_path):
  config = fm_config("phikon,finetune", tiny_data_dir, weights["phikon"], "",
                     **LORA, **{"optim.ema_decay": 0.99})
  with pytest.raises(ValueError, match="ema_decay=0"):
    main.run(config, str(tmp_path / "ema"))
  from cellvit_jax import models
  with pytest.raises(ValueError, match="adapts a foundation model"):
    models.from_config(config.model, ml_collections.ConfigDict({"preset": ""}), 3,
                       config.finetune)


@pytest.fixture(scope="module")
def lora_runs(tiny_data_dir, weights, tmp_path_factory):
  """Two LoRA runs of 4 steps: one uninterrupted, one stopped after 2 and resumed."""
  base = tmp_path_factory.mktemp("lora_runs")
  config = lambda **o: fm_config("phikon,finetune", tiny_data_dir, weights["phikon"], "",
                                 **LORA, **{"finetune.lora_targets": "query,value"}, **o)
  ref, resumed = str(base / "ref"), str(base / "resumed")
  main.run(config(), ref)
  main.run(config(**{"train.max_steps_per_run": 2}), resumed)
  main.run(config(), resumed)
  return ref, resumed, config()


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in r.items() if k != "images_per_sec"} for r in map(json.loads, f)
            if r["split"] == "train"]


def _results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def test_lora_run_resumes_to_the_uninterrupted_metrics(lora_runs):
  ref, resumed, _ = lora_runs
  assert [r["step"] for r in _records(resumed)] == [2, 4]
  assert _records(resumed) == _records(ref)
  a, b = _results(ref), _results(resumed)
  assert a["test"] == b["test"] and a["val"] == b["val"] and a["finished"]


def test_checkpoint_holds_adapters_and_head_only(lora_runs):
  ref, _, config = lora_runs
  model = lora.build(config.fm, config.finetune, 4)
  trainable = lora.trainable_count(jax.eval_shape(lambda: steps.create_state(
      jax.random.key(0), model, optax.adam(1e-3), 40, parallel.make_mesh(),
      trained_only=True).params))
  # hidden 32, 2 blocks, query and value, rank 4: 2 x 2 x (32 x 4 + 4 x 32); head 32 x 4 + 4
  assert trainable == 2 * 2 * (32 * 4 + 4 * 32) + 32 * 4 + 4
  assert _results(ref)["num_params"] == trainable
  step = checkpoint.Checkpointer(ref).latest_step()
  saved = ocp.StandardCheckpointer().restore(os.path.join(ref, "checkpoints", str(step), "state"))
  assert saved["frozen"] == {} or saved["frozen"] is None or not jax.tree.leaves(saved["frozen"])
  assert lora.trainable_count(saved["params"]) == trainable
  # Adam's two moments: of the trained params only; nothing else of the base's size is saved.
  saved_total = sum(np.size(x) for x in jax.tree.leaves(saved))
  assert saved_total < 3 * trainable + 64
  base_total = lora.trainable_count(model.base.params)
  assert base_total > 10 * trainable
  # The base is unchanged by training: the restored run's frozen base is the published one.
  run_state = finished_run.load_run(ref).state
  delta = lora.merged_params(model, jax.tree.map(np.zeros_like, saved["params"]),
                             {"backbone": model.base.params})
  assert jax.tree.structure(delta["backbone"]) == jax.tree.structure(run_state.params["backbone"])


def test_restore_onto_other_base_weights_is_refused(lora_runs, tiny_data_dir, tmp_path):
  ref, _, config = lora_runs
  config = config.copy_and_resolve_references()  # the fixture's is shared
  other = fm_tiny.write_tiny("phikon", str(tmp_path / "other"), seed=1)
  config.fm.weights = other
  config.train.epochs = 2.0  # a longer run: resuming would need the checkpoint
  workdir = str(tmp_path / "copy")
  shutil.copytree(ref, workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    stored = json.load(f)
  stored["fm"]["weights"], stored["train"]["epochs"] = other, 2.0
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(stored, f)
  with pytest.raises(checkpoint.BaseWeightsMismatch, match="other base weights"):
    main.run(config, workdir)


def test_predict_serves_the_merged_model(lora_runs, tiny_data_dir, tmp_path):
  ref, _, config = lora_runs
  run = finished_run.load_run(ref)
  assert not lora.is_lora(run.model) and run.model is not None  # the plain FM, merged
  images = (np.asarray(_images(6, seed=5)) * 255).astype(np.uint8)
  probs = predict.probabilities(run, images, 8)
  # Against the unmerged LoRA forward of the same checkpoint.
  model = lora.build(config.fm, config.finetune, run.dataset.num_classes)
  from cellvit_jax.engine import state as state_lib
  abstract = state_lib.build_state(model, optax.adam(1e-3), 40, run.mesh, abstract=True)
  ckpt = checkpoint.Checkpointer(ref)
  raw = ocp.StandardCheckpointer().restore(
      os.path.join(ref, "checkpoints", str(ckpt.latest_step()), "state"))
  ckpt.close()
  unmerged = abstract.replace(params=raw["params"])
  x = run.resize(jnp.asarray(images, jnp.float32) / 255.0)
  want = jax.nn.softmax(model.apply(steps._variables(unmerged), x), -1)
  np.testing.assert_allclose(probs, np.asarray(want), rtol=1e-5, atol=1e-6)


def _cmd(data_dir, weights, workdir):
  o = fm_overrides(data_dir, weights, "", **LORA, **{
      "finetune.lora_targets": "query,value", "train.epochs": 3.0, "train.log_every_steps": 1,
      "train.checkpoint_every_epochs": 1.0, "train.eval_every_epochs": 3.0,
      "train.batch_size": 16})
  return [sys.executable, "-m", "cellvit_jax.main", "--config=configs/fm.py:phikon,finetune",
          f"--workdir={workdir}", *as_flags(o)]


@pytest.mark.slow
def test_lora_sigkill_mid_run_then_resume_equals_uninterrupted_run(tiny_data_dir, weights,
                                                                   tmp_path):
  from test_reliability import _train_records, sigkill_mid_run
  ref, killed = str(tmp_path / "ref"), str(tmp_path / "killed")
  env = {**os.environ, "PYTHONPATH": REPO}
  subprocess.run(_cmd(tiny_data_dir, weights["phikon"], ref), cwd=REPO, check=True,
                 capture_output=True, timeout=600, env=env)
  # 8 steps per epoch (flaglimit 32 x 4 classes / batch 16): killed mid-epoch 2 or 3.
  sigkill_mid_run(_cmd(tiny_data_dir, weights["phikon"], killed), killed, checkpoint_step=8,
                  steps=10, env=env)
  subprocess.run(_cmd(tiny_data_dir, weights["phikon"], killed), cwd=REPO, check=True,
                 capture_output=True, timeout=600, env=env)
  strip = lambda rs: [{k: v for k, v in r.items() if k != "images_per_sec"} for r in rs]
  assert strip(_train_records(killed)) == strip(_train_records(ref))
  a, b = _results(ref), _results(killed)
  assert a["test"] == b["test"] and a["val"] == b["val"]


def test_lora_trainable_count_at_vit_b_size():
  """phikon at its published size (ViT-B/16: 12 blocks, hidden 768, MLP 3072), rank 8 on
  every block kernel, a 4-class head: by hand, against the cost table's count."""
  from cellvit_jax.experiments import fm_cost
  per_block = 4 * 8 * (768 + 768) + 8 * (768 + 3072) + 8 * (3072 + 768)
  assert fm_cost.lora_trainable_params("phikon") == 12 * per_block + 768 * 4 + 4
  q_v = 12 * 2 * 8 * (768 + 768) + 768 * 4 + 4
  assert fm_cost.lora_trainable_params("phikon", targets="query,value") == q_v


def test_a_run_stored_before_finetune_existed_loads_as_full():
  from cellvit_jax.config import defaults
  from cellvit_jax.runs import stored_config, workdir
  stored = defaults.get_config().to_dict()
  del stored["finetune"]
  assert stored_config.over_defaults(stored).finetune.method == "full"
  assert workdir.config_differences(stored, defaults.get_config().to_dict()) == []
