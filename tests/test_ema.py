"""config.optim.ema_decay: a moving average of the weights (and BatchNorm statistics) that the
train step keeps and every evaluation uses; off, the state is the plain TrainState."""
import jax
import numpy as np
import pytest

from cellvit_jax import models, parallel
from cellvit_jax.engine import optimizer, steps
from cellvit_jax.modes import finished_run, train
from cellvit_jax.runs import stored_config
from conftest import tiny_config


def _setup(ema_decay):
  config = tiny_config("unused", **{"optim.ema_decay": ema_decay})
  # The conv stem has BatchNorm, so batch_stats are averaged too.
  model = models.build("customvit", 4, **config.model.kwargs)
  tx, schedule = optimizer.make_optimizer(config.optim, model, 30, 4)
  state = steps.create_state(jax.random.key(0), model, tx, 40, parallel.make_mesh(),
                             ema=ema_decay > 0)
  return config, model, schedule, state


def _batch(seed=0, n=16):
  rng = np.random.default_rng(seed)
  return {"image": rng.integers(0, 256, (n, 40, 40, 3), dtype=np.uint8),
          "label": rng.integers(0, 4, n).astype(np.int32)}


def test_the_average_follows_the_weights_with_its_warmed_up_decay():
  config, model, schedule, state = _setup(0.9)
  assert isinstance(state, steps.EmaTrainState)
  assert state.ema["batch_stats"], "the conv stem's BatchNorm statistics are averaged"
  step = jax.jit(steps.make_train_step(model, schedule, config.optim, config.augment,
                                       config.normalize))
  expected = jax.device_get(state.ema)
  for i in range(3):
    state, _ = step(state, _batch(i), jax.random.key(i))
    d = min(0.9, (1 + i) / (10 + i))  # the decay at optimiser step i
    now = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    expected = jax.tree.map(lambda e, w: d * e + (1 - d) * w, expected, now)
    for got, want in zip(jax.tree.leaves(jax.device_get(state.ema)), jax.tree.leaves(expected)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # The average is not the weights (the check can fail).
  diff = [np.abs(a - b).max() for a, b in zip(jax.tree.leaves(state.ema["params"]),
                                              jax.tree.leaves(state.params))]
  assert max(diff) > 1e-4


def test_the_training_trajectory_is_the_same_with_and_without_it():
  with_ema, without = _setup(0.99), _setup(0.0)
  assert type(without[3]) is steps.TrainState  # off: the state runs stored before EMA had
  params = []
  for config, model, schedule, state in (with_ema, without):
    step = jax.jit(steps.make_train_step(model, schedule, config.optim, config.augment,
                                         config.normalize))
    for i in range(2):
      state, _ = step(state, _batch(i), jax.random.key(i))
    params.append(jax.device_get(state.params))
  for a, b in zip(*map(jax.tree.leaves, params)):
    np.testing.assert_array_equal(a, b)


def test_evaluation_uses_the_average():
  config, model, _, state = _setup(0.9)
  shifted = jax.tree.map(lambda x: x + 0.05, state.ema)
  state = state.replace(ema=shifted)
  images = np.random.default_rng(0).random((4, 40, 40, 3)).astype(np.float32)
  got = steps.eval_logits(model, config.normalize, state, images)
  x = steps.model_input(model, images, config.normalize)
  want = model.apply(shifted, x, train=False)
  plain = model.apply({"params": state.params, "batch_stats": state.batch_stats}, x, train=False)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.abs(np.asarray(got) - np.asarray(plain)).max() > 1e-3


def test_reset_sets_the_average_to_the_current_weights():
  _, _, _, state = _setup(0.9)
  moved = state.replace(params=jax.tree.map(lambda x: x + 1.0, state.params))
  reset = steps.reset_ema(moved)
  for a, b in zip(jax.tree.leaves(reset.ema["params"]), jax.tree.leaves(moved.params)):
    np.testing.assert_array_equal(a, b)
  plain = _setup(0.0)[3]
  assert steps.reset_ema(plain) is plain


def test_a_state_without_the_average_is_refused_when_the_config_asks_for_it():
  config, model, schedule, _ = _setup(0.9)
  plain = _setup(0.0)[3]
  with pytest.raises(ValueError, match="ema_decay"):
    step = steps.make_train_step(model, schedule, config.optim, config.augment, config.normalize)
    step(plain, _batch(), jax.random.key(0))


@pytest.mark.parametrize("value", [1.0, -0.1, float("nan")])
def test_bad_decays_are_named(value):
  config = tiny_config("unused", **{"optim.ema_decay": value})
  with pytest.raises(ValueError, match="optim.ema_decay"):
    optimizer.check_optim(config.optim)


def test_runs_stored_before_it_load_with_it_off():
  stored = tiny_config("unused").to_dict()
  del stored["optim"]["ema_decay"]
  assert stored_config.over_defaults(stored).optim.ema_decay == 0.0


def test_an_interrupted_run_keeps_its_average(tiny_data_dir, tmp_path):
  """Resumed from a checkpoint, the run ends where an uninterrupted one does: the average is
  saved and restored with the weights (reset on resume, the test metrics would differ), and a
  finished run loads with it."""
  overrides = {"optim.ema_decay": 0.95, "train.epochs": 1.0, "train.eval_every_epochs": 1.0}
  whole = train.train_and_evaluate(tiny_config(tiny_data_dir, **overrides),
                                   str(tmp_path / "whole"))
  parted = str(tmp_path / "parted")
  first = train.train_and_evaluate(
      tiny_config(tiny_data_dir, **overrides, **{"train.max_steps_per_run": 5}), parted)
  assert not first["finished"]
  second = train.train_and_evaluate(tiny_config(tiny_data_dir, **overrides), parted)
  assert second["finished"] and second["test"] == whole["test"]
  run = finished_run.load_run(parted)
  assert isinstance(run.state, steps.EmaTrainState)
