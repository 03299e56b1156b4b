"""Blur augmentation in the train step, load_run, and the blur-robustness mode end to end."""
import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cellvit_jax import main, models
from cellvit_jax.config import files as config_files
from cellvit_jax.engine import steps
from cellvit_jax.modes import blur_study, finished_run, train
from cellvit_jax.ops import augment, blur
from conftest import REPO, apply_overrides, study_config, tiny_config, tiny_overrides

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _blur_config(run_dir, **fields):
  return study_config("blur.py", run_dir, **fields)


@pytest.fixture(scope="module")
def trained_run(tiny_trained_run):
  return tiny_trained_run


# --- training augmentation -------------------------------------------------------------

def test_preprocess_blur_augmentation_blurs_after_flips(tiny_data_dir):
  images = np.random.default_rng(0).integers(0, 256, (8, 40, 40, 3), dtype=np.uint8)
  rng = jax.random.key(3)
  off = tiny_config(tiny_data_dir)
  assert off.augment.blur.prob == 0.0  # off by default
  on = tiny_config(tiny_data_dir, **{"augment.blur.prob": 1.0, "augment.blur.sigma_min": 1.0,
                                     "augment.blur.sigma_max": 1.5})
  model = models.build("customvit", 4, **off.model.kwargs)
  x_off = steps.model_input(model, steps.augment(images, rng, off.augment), off.normalize)
  x_on = jax.jit(lambda im, r: steps.model_input(model, steps.augment(im, r, on.augment),
                                                 on.normalize))(images, rng)
  assert np.abs(np.asarray(x_on) - np.asarray(x_off)).max() > 0.05
  # Same flips/rotations as without blur, then the blur (linear, weights summing to 1, so
  # it commutes with the per-channel affine normalisation).
  sigma = augment.sample_blur_sigma(jax.random.fold_in(rng, steps._BLUR_STREAM), 8, 1.0, 1.0, 1.5)
  assert np.all((np.asarray(sigma) >= 1.0) & (np.asarray(sigma) <= 1.5))
  expected = blur.gaussian_blur(x_off, sigma, max_sigma=1.5)
  np.testing.assert_allclose(np.asarray(x_on), np.asarray(expected), atol=1e-5)


def test_blur_aug_config_trains(tiny_data_dir, tmp_path):
  config = config_files.load(os.path.join(REPO, "configs", "customvit_blur_aug.py"))
  assert config.augment.blur.prob > 0
  config = apply_overrides(config, tiny_overrides(tiny_data_dir, **{"train.epochs": 0.0,
                                                                     "train.steps": 2}))
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert results["finished"] and np.isfinite(results["test"]["loss"])
  assert results["config"]["augment"]["blur"]["prob"] == 0.5


def test_bad_blur_aug_config_is_refused_before_writing(tiny_data_dir, tmp_path):
  config = tiny_config(tiny_data_dir, **{"augment.blur.prob": 1.0, "augment.blur.sigma_min": 2.0,
                                         "augment.blur.sigma_max": 1.0})
  with pytest.raises(ValueError, match="config.augment.blur: need 0 <= sigma_min <= sigma_max"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


# --- load_run --------------------------------------------------------------------------

def test_load_run_restores_the_final_state(trained_run):
  run = finished_run.load_run(trained_run)
  assert run.step == run.total_steps == 480
  assert run.input_size == run.native_size == 40
  assert run.config.augment.blur.prob == 0.0
  with open(os.path.join(trained_run, "results.json")) as f:
    test_acc = json.load(f)["test"]["accuracy"]
  from cellvit_jax.data import pipeline
  images, labels = pipeline.load_arrays(run.dataset.source("test"),
                                        range(len(run.dataset.labels("test"))))
  logits = np.asarray(run.logits(images))
  assert logits.shape == (len(labels), run.dataset.num_classes)
  assert abs(float(np.mean(logits.argmax(-1) == labels)) - test_acc) <= 1 / len(labels)


def test_workdir_without_a_finished_run_is_a_clear_error(tiny_data_dir, tmp_path):
  missing = tmp_path / "nothing here"
  empty = tmp_path / "empty"
  empty.mkdir()
  for workdir in (missing, empty):
    with pytest.raises(FileNotFoundError, match="holds no finished training run.*train first"):
      main.run(_blur_config(str(workdir)))
    assert not os.path.exists(empty / "checkpoints")  # looking does not create it
  unfinished = str(tmp_path / "unfinished")
  train.train_and_evaluate(tiny_config(tiny_data_dir, **{"train.epochs": 0.0, "train.steps": 2,
                                                         "train.max_steps_per_run": 1}), unfinished)
  with pytest.raises(FileNotFoundError, match=r"unfinished.*step 1 of 2.*rerun"):
    finished_run.load_run(unfinished)
  assert finished_run.load_run(unfinished, allow_unfinished=True).step == 1


# --- mode=blur -------------------------------------------------------------------------

def test_blur_mode_end_to_end(trained_run, capsys):
  main.run(_blur_config(trained_run))
  out = capsys.readouterr().out
  assert "same as pre_resize" in out and "rel.acc" in out
  with open(os.path.join(trained_run, "blur", "blur.json")) as f:
    result = json.load(f)
  assert result["sigmas"] == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]
  assert result["post_resize"] == "same as pre_resize: the model's input is 40x40"
  rows = result["pre_resize"]["per_sigma"]
  assert [r["sigma"] for r in rows] == result["sigmas"]
  assert rows[0]["relative_accuracy"] == 1.0
  assert [r["kernel_radius"] for r in rows] == [0, 2, 3, 5, 6, 9]  # int(3 * sigma + 0.5)
  assert len({round(r["loss"], 7) for r in rows}) == len(rows)  # the blur reaches the model
  rel = [r["relative_accuracy"] for r in rows]
  auc = result["pre_resize"]["auc_relative_accuracy"]
  # Relative accuracy can exceed 1 where blur happens to help; the area is then above 1 too.
  assert 0.0 <= auc <= max(rel)
  assert auc == pytest.approx(np.trapezoid(rel, result["sigmas"]) / 3.0)
  # Sigma 0 is the unblurred test evaluation of training.
  with open(os.path.join(trained_run, "results.json")) as f:
    test_acc = json.load(f)["test"]["accuracy"]
  assert abs(rows[0]["accuracy"] - test_acc) <= 1 / result["num_examples"]
  with open(os.path.join(trained_run, "blur", "blur.png"), "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  import matplotlib.image
  assert matplotlib.image.imread(os.path.join(trained_run, "blur", "blur.png")).ndim == 3


def test_normalized_auc():
  assert blur_study.normalized_auc([0, 1, 3], [1, 1, 1]) == 1.0
  assert blur_study.normalized_auc([0, 2], [1, 0]) == 0.5
  assert blur_study.normalized_auc([0, 1, 3], [1, 0.5, 0.5]) == pytest.approx((0.75 + 1.0) / 3)


@pytest.mark.parametrize("sigmas, match", [
    ((0.0, -0.5, 1.0), "finite and >= 0"),
    ((0.0, float("nan")), "finite and >= 0"),
    ((0.5, 1.0), "needs 0"),
    ((0.0,), "needs 0"),
    ((0.0, 1.0, 1.0), "repeated"),
])
def test_bad_sigma_grid_is_refused_before_loading(trained_run, tmp_path, sigmas, match):
  out = tmp_path / "out"
  with pytest.raises(ValueError, match=match):
    main.run(_blur_config(trained_run, sigmas=sigmas), str(out))
  assert not out.exists()


def test_cli_refuses_negative_sigma_in_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "cellvit_jax.main", "--config=configs/blur.py",
       f"--config.blur.run={tmp_path}", "--config.blur.sigmas=(0, -1, 2)"],
      capture_output=True, text=True, cwd=REPO, timeout=120,
      env={**os.environ, "PYTHONPATH": REPO})
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: config.blur.sigmas must be finite and >= 0"), proc.stderr[-2000:]


@dataclasses.dataclass
class _UpsampledRun(finished_run.Run):
  """The tiny run behind a 2x upsampling: input 80x80, pooled back to 40 for the model.

  Stands in for an FM run (input 224) to exercise the post-resize placement."""

  def forward(self, state, images01):
    b, h, w, c = images01.shape
    pooled = images01.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    return super().forward(state, pooled)


def test_post_resize_differs_and_scales_sigma(trained_run, tmp_path):
  base = finished_run.load_run(trained_run)
  run = _UpsampledRun(**{f.name: getattr(base, f.name) for f in dataclasses.fields(finished_run.Run)
                         if f.name not in ("input_size", "_logits_fn")}, input_size=80)
  assert run.resize(jnp.zeros((2, 40, 40, 3))).shape == (2, 80, 80, 3)
  result = blur_study.study(run, (0.0, 1.0, 2.0))
  pre, post = result["pre_resize"]["per_sigma"], result["post_resize"]["per_sigma"]
  assert [r["sigma_at_blur"] for r in post] == [0.0, 2.0, 4.0]
  assert [r["kernel_radius"] for r in post] == [0, 6, 12]
  assert pre[0]["relative_accuracy"] == post[0]["relative_accuracy"] == 1.0
  assert pre[0]["loss"] == pytest.approx(post[0]["loss"], rel=1e-6)  # sigma 0: same computation
  assert any(abs(a["loss"] - b["loss"]) > 1e-6 for a, b in zip(pre[1:], post[1:])), (pre, post)
  path = str(tmp_path / "blur.png")
  blur_study.plot(result, path)
  assert "post_resize:" in blur_study.table(result)
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE


def test_runs_recorded_before_blur_augmentation_still_resume(tiny_data_dir):
  from cellvit_jax.runs import workdir as workdir_lib
  new = tiny_config(tiny_data_dir).to_dict()
  old = json.loads(json.dumps(new))
  del old["augment"]["blur"]
  assert workdir_lib.config_differences(old, new) == []
  new["augment"]["blur"]["prob"] = 0.5
  assert workdir_lib.config_differences(old, new) == ["augment.blur.prob"]
