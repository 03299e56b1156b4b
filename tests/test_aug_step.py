"""The recipe switches config.augment.{hed, color, mixup_alpha, cutmix_alpha} in the train step:
off leaves them out of the program, on draws from its own stream, trains, and bad values are
named."""
import json
import os

import jax
import numpy as np
import pytest

from cellvit_jax import models, parallel
from cellvit_jax.engine import optimizer, steps
from cellvit_jax.modes import train
from cellvit_jax.ops import color, mixing
from cellvit_jax.runs import stored_config
from cellvit_jax.runs import workdir as workdir_lib
from conftest import tiny_config

NEW_KEYS = ("hed", "color", "mixup_alpha", "cutmix_alpha")


def _config(**extra):
  # Blur on, so its draws are covered too; the model tiny (tiny_config's CustomViT).
  return tiny_config("unused", **{"augment.blur.prob": 0.5, **extra})


def _old_run_config():
  """A config as a run stored it before these switches existed, as it resumes today."""
  stored = json.loads(json.dumps(_config().to_dict()))
  for key in NEW_KEYS:
    del stored["augment"][key]
  return stored_config.over_defaults(stored)


def _batch(seed=0, n=16):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, 40, 40, 3), dtype=np.uint8),
          "label": rng.integers(0, 4, n).astype(np.int32)}


@pytest.fixture(scope="module")
def setup():
  """One model, optimiser and initial state for every step below (the switches do not touch
  them); a patch tokenizer because it compiles fastest."""
  config = _config()
  model = models.build("customvit", 4, **{**config.model.kwargs, "tokenizer": "patch"})
  tx, schedule = optimizer.make_optimizer(config.optim, model, 30, 4)
  return model, schedule, steps.create_state(jax.random.key(0), model, tx, 40,
                                             parallel.make_mesh())


def _run(setup, config, n_steps=2):
  """(the step's StableHLO text, its metrics and final params after n_steps on one batch)."""
  model, schedule, state = setup
  step = jax.jit(steps.make_train_step(model, schedule, config.optim, config.augment,
                                       config.normalize))
  batch = _batch()
  text = step.lower(state, batch, jax.random.key(1)).as_text()
  metrics = []
  for i in range(n_steps):
    state, m = step(state, batch, jax.random.fold_in(jax.random.key(1), i))
    metrics.append(jax.device_get(m))
  return text, metrics, jax.device_get(state.params)


def test_switches_off_leave_their_ops_out_of_the_step(setup, monkeypatch):
  """Off means not in the program: with the switches off (the default; explicitly off with
  other strengths set; an old run's config, switches absent and filled in by stored_config)
  the step never calls the stain / colour jitter or mixing ops (patched here to raise), the
  three configs lower to one program, and it trains (finite metrics). On, each switch is
  another program, so the comparison can fail."""
  def refuse(*args, **kwargs):
    raise AssertionError("an augmentation op was traced with its switch off")
  for module, name in ((color, "random_hed_jitter"), (color, "random_color_jitter"),
                       (mixing, "random_mix")):
    monkeypatch.setattr(module, name, refuse)
  ref_text, metrics, params = _run(setup, _config())
  assert all(np.isfinite(float(m["loss"])) for m in metrics)
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(params))
  explicit_off = _config(**{"augment.hed.prob": 0.0, "augment.hed.scale": 0.5,
                            "augment.color.prob": 1.0, "augment.color.brightness": 0.0,
                            "augment.color.contrast": 0.0, "augment.color.saturation": 0.0,
                            "augment.mixup_alpha": 0.0, "augment.cutmix_alpha": 0.0})
  for config in (explicit_off, _old_run_config()):
    assert _run(setup, config, n_steps=0)[0] == ref_text
  monkeypatch.undo()
  for key, value in (("augment.hed.prob", 0.5), ("augment.color.prob", 0.5),
                     ("augment.mixup_alpha", 0.4), ("augment.cutmix_alpha", 1.0)):
    assert _run(setup, _config(**{key: value}), n_steps=0)[0] != ref_text


def test_stain_and_colour_jitter_follow_the_flips_with_their_own_streams():
  images, rng = _batch()["image"][:8], jax.random.key(3)
  off = _config(**{"augment.blur.prob": 0.0})
  on = _config(**{"augment.blur.prob": 0.0, "augment.hed.prob": 1.0, "augment.color.prob": 1.0})
  x_off = steps.augment(images, rng, off.augment)
  x_on = steps.augment(images, rng, on.augment)
  hed = color.random_hed_jitter(jax.random.fold_in(rng, steps._HED_STREAM), x_off,
                                1.0, on.augment.hed.scale, on.augment.hed.shift)
  expect = color.random_color_jitter(jax.random.fold_in(rng, steps._COLOR_STREAM), hed, 1.0,
                                     0.1, 0.1, 0.1)
  np.testing.assert_allclose(np.asarray(x_on), np.asarray(expect), rtol=0, atol=1e-6)
  assert np.abs(np.asarray(x_on) - np.asarray(x_off)).max() > 0.01


SWITCHES = [{"augment.hed.prob": 0.5, "augment.color.prob": 0.5}, {"augment.mixup_alpha": 0.4},
            {"augment.cutmix_alpha": 1.0}]
SWITCH_IDS = ["hed+color", "mixup", "cutmix"]


@pytest.mark.parametrize("switches", SWITCHES, ids=SWITCH_IDS)
def test_step_with_the_switch_on_fits_a_batch(switches, setup):
  """30 steps on one batch whose class is its colour (so the jitter does not hide it):
  the loss stays finite and falls."""
  model, schedule, state = setup
  rng = np.random.default_rng(0)
  labels = np.arange(16) % 4
  colours = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [150, 150, 150]])
  images = colours[labels][:, None, None, :] + rng.normal(0, 30, (16, 40, 40, 3))
  batch = {"image": np.clip(images, 0, 255).astype(np.uint8), "label": labels.astype(np.int32)}
  config = _config(**switches)
  step = jax.jit(steps.make_train_step(model, schedule, config.optim, config.augment,
                                       config.normalize))
  losses = []
  for i in range(30):
    state, metrics = step(state, batch, jax.random.fold_in(jax.random.key(1), i))
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)) and np.mean(losses[-5:]) < losses[0] - 0.3, losses


def _train_losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["loss"] for r in map(json.loads, f) if r["split"] == "train"]


def test_run_with_every_switch_on_finishes_and_stores_them(tiny_data_dir, tmp_path):
  switches = {k: v for s in SWITCHES for k, v in s.items()}
  config = tiny_config(tiny_data_dir, **{"train.epochs": 0.0, "train.steps": 2,
                                         "model.kwargs.tokenizer": "patch", **switches})
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["finished"] and np.isfinite(results["test"]["loss"])
  augment = results["config"]["augment"]
  assert augment["hed"]["prob"] == augment["color"]["prob"] == 0.5
  assert (augment["mixup_alpha"], augment["cutmix_alpha"]) == (0.4, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("switches", SWITCHES, ids=SWITCH_IDS)
def test_tiny_run_with_the_switch_on_trains(switches, tiny_data_dir, tmp_path):
  """The whole train_and_evaluate, 3 epochs on the tiny dataset (~30 s each on one core)."""
  config = tiny_config(tiny_data_dir, **{"train.epochs": 3.0, "train.log_every_steps": 8,
                                         "train.eval_every_epochs": 3.0, **switches})
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["finished"] and np.isfinite(results["test"]["loss"])
  losses = _train_losses(str(tmp_path / "run"))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.05, losses


def test_runs_stored_before_the_switches_resume_and_load_with_them_off():
  new = _config().to_dict()
  old = json.loads(json.dumps(new))
  for key in NEW_KEYS:
    del old["augment"][key]
  assert workdir_lib.config_differences(old, new) == []
  loaded = stored_config.over_defaults(old)
  assert loaded.augment.hed.prob == 0.0 and loaded.augment.color.prob == 0.0
  assert loaded.augment.mixup_alpha == 0.0 and loaded.augment.cutmix_alpha == 0.0
  new["augment"]["hed"]["prob"] = 0.5
  new["augment"]["cutmix_alpha"] = 1.0
  assert workdir_lib.config_differences(old, new) == ["augment.cutmix_alpha", "augment.hed.prob"]
