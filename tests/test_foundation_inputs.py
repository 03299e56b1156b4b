"""Bad foundation-model inputs: each a one-line error naming both sides and the fix, and
nothing written.  Cheap: headers and configs only, no training."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from cellvit_jax.config import files as config_files
from cellvit_jax.models.fm import convert, foundation
from cellvit_jax.models.fm import tiny as fm_tiny
from cellvit_jax.models.fm import weights as fm_weights
from cellvit_jax.modes import feature_cache
from conftest import REPO


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  base = tmp_path_factory.mktemp("fm_weights")
  return {p: fm_tiny.write_tiny(p, str(base / p)) for p in ("phikon", "uni", "plip")}


def _config(spec, weights_dir, **fm):
  config = config_files.load(os.path.join(REPO, "configs", f"fm.py:{spec}"))
  config.fm.weights = weights_dir
  for k, v in fm.items():
    config.fm[k] = v
  return config


def _build(spec, weights_dir, **fm):
  config = _config(spec, weights_dir, **fm)
  return foundation.build(config.fm, 4, config.model.dtype)


def test_weights_of_another_family_name_both(weights):
  with pytest.raises(ValueError, match=r"holds a 'clip' checkpoint.*'phikon' expects 'vit'.*"
                                       r"--config.fm.preset=plip"):
    _build("phikon,probe", weights["plip"])
  with pytest.raises(ValueError,
                     match=r"holds a 'dinov2' checkpoint \(timm\).*'plip' expects 'clip'"):
    _build("plip,probe", weights["uni"])


def test_truncated_safetensors(weights, tmp_path):
  bad = str(tmp_path / "cut")
  shutil.copytree(weights["phikon"], bad)
  path = os.path.join(bad, "model.safetensors")
  size = os.path.getsize(path)
  with open(path, "r+b") as f:
    f.truncate(size // 2)
  with pytest.raises(ValueError, match=rf"model.safetensors' is truncated or not a safetensors "
                                       rf"file \({size // 2} bytes; .*not fully covered"):
    config = _config("phikon,probe", bad)
    foundation.pretrained_backbone(config.fm, foundation.build(config.fm, 0, config.model.dtype))
  with open(path, "r+b") as f:
    f.truncate(4)
  with pytest.raises(ValueError, match="truncated"):
    _build("phikon,probe", bad)


def test_checkpoint_with_another_hidden_size(weights, tmp_path):
  bad = str(tmp_path / "mixed")
  shutil.copytree(weights["phikon"], bad)
  other = fm_tiny.write_tiny("phikon", str(tmp_path / "wide"), hidden=48)
  shutil.copy(os.path.join(other, "model.safetensors"), os.path.join(bad, "model.safetensors"))
  config = _config("phikon,probe", bad)
  model = foundation.build(config.fm, 0, config.model.dtype)  # config.json says hidden 32
  with pytest.raises(ValueError, match=r"tensor embeddings.cls_token has shape \(1, 1, 48\) in "
                                       r"model.safetensors but config.json describe vit hidden 32.*"
                                       r"needs \(1, 1, 32\)"):
    foundation.pretrained_backbone(config.fm, model)


@pytest.mark.parametrize("preset", ["phikon", "uni"])
def test_input_size_not_a_multiple_of_the_patch(weights, preset):
  with pytest.raises(ValueError, match=r"config.fm.input_size=40 is not a multiple of the "
                                       r"checkpoint's patch size 16.*use 32 or 48"):
    _build(f"{preset},probe", weights[preset], input_size=40)


def test_vit_input_size_must_match_its_position_table(weights):
  with pytest.raises(ValueError,
                     match=r"input_size=48 differs from the checkpoint's image size 32"):
    _build("phikon,probe", weights["phikon"], input_size=48)
  assert _build("uni,probe", weights["uni"], input_size=48).input_size == 48  # Dinov2 interpolates


def test_missing_and_empty_weights(tmp_path):
  with pytest.raises(ValueError, match=r"config.fm.weights is empty; "
                                       r"pass --config.fm.weights=owkin/phikon.*--tiny=phikon"):
    _build("phikon,probe", "")
  with pytest.raises(FileNotFoundError, match=r"is not a directory; pass the hub id "
                                              r"\(--config.fm.weights=MahmoodLab/UNI\)"):
    _build("uni,probe", str(tmp_path / "nowhere"))
  (tmp_path / "bin").mkdir()
  (tmp_path / "bin" / "pytorch_model.bin").write_bytes(b"x")
  with pytest.raises(FileNotFoundError, match=r"no model.safetensors or flax_model.msgpack.*"
                                              r"cellvit_jax.models.fm.convert --from=timm"):
    _build("uni,probe", str(tmp_path / "bin"))


def test_bad_fm_options_and_presets(weights):
  with pytest.raises(ValueError, match="config.fm.feature='avg'; valid: cls, cls_mean"):
    _build("phikon,probe", weights["phikon"], feature="avg")
  with pytest.raises(ValueError,
                     match="config.fm.resize_method='nearest'; valid: bilinear, bicubic"):
    _build("phikon,probe", weights["phikon"], resize_method="nearest")
  with pytest.raises(ValueError, match="unknown config.fm.preset 'virchow'; valid presets: "
                                       "gigapath, hoptimus0, phikon, phikon2, plip, uni, uni2, "
                                       "virchow2"):
    _config("virchow,probe", "")
  with pytest.raises(ValueError, match="mode 'train' is not one of probe, finetune"):
    _config("uni,train", "")
  with pytest.raises(ValueError, match=r"layer_decay=1.5 must be in \(0, 1\]"):
    foundation.build(_config("uni,finetune", weights["uni"], layer_decay=1.5).fm, 4)


def test_converter_refuses_unsupported_timm_layouts(weights, tmp_path):
  state = fm_weights.read_safetensors(os.path.join(weights["uni"], "model.safetensors"))
  z = lambda *s: np.zeros(s, np.float32)
  with pytest.raises(ValueError, match=r"has tensor 'blocks.0.attn.q_norm.weight' \(query/key "
                                       r"normalisation\), which Dinov2Model / "
                                       r"Dinov2WithRegistersModel cannot express"):
    convert.timm_to_dinov2({**state, "blocks.0.attn.q_norm.weight": z(16)})
  with pytest.raises(ValueError, match=r"'fc_norm.bias' \(global average pooling"):
    convert.architecture({**state, "fc_norm.weight": z(32), "fc_norm.bias": z(32)})
  with pytest.raises(ValueError, match=r"'blocks.0.mlp.fc1_g.weight' \(an unpacked SwiGLU"):
    convert.architecture({**state, "blocks.0.mlp.fc1_g.weight": z(64, 32)})
  with pytest.raises(ValueError, match=r"pos_embed has 7 positions, neither a square grid nor 1 "
                                       r"class \+ 4 register \+ a square grid"):
    convert.architecture({**state, "reg_token": z(1, 4, 32), "pos_embed": z(1, 7, 32)})
  with pytest.raises(ValueError, match=r"has no tensor 'cls_token'"):
    convert.architecture({k: v for k, v in state.items() if k != "cls_token"})
  # A classifier head is dropped, not refused: we read the features before it.
  assert convert.architecture({**state, "head.weight": z(5, 32)}, 2)["hidden_size"] == 32
  assert convert.default_heads(1280) == 16 and convert.default_heads(1536) == 24
  with pytest.raises(ValueError,
                     match=r"--num_heads=5 does not divide the checkpoint's hidden size 32"):
    convert.timm_to_dinov2(state, num_heads=5)
  with pytest.raises(ValueError, match="--from='hf' is not supported"):
    convert.convert("hf", weights["uni"], str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_feature_cache_ignores_a_corrupt_or_foreign_entry(tmp_path):
  cache = feature_cache.FeatureCache(str(tmp_path))
  key = {"preset": "phikon", "dataset": "d", "split": "train", "x": 1}
  x = np.arange(6, dtype=np.float32).reshape(2, 3)
  assert cache.get_or_compute(key, lambda: x)[1] is False
  assert cache.get_or_compute(key, lambda: 1 / 0)[1] is True
  with open(cache.path(key), "wb") as f:
    f.write(b"not an npz")
  got, hit = cache.get_or_compute(key, lambda: x + 1)
  assert not hit and np.array_equal(got, x + 1) and np.array_equal(cache.get(key), x + 1)


def test_main_prints_one_error_line_and_writes_nothing(weights, tmp_path):
  workdir = tmp_path / "run"
  env = {**os.environ, "PYTHONPATH": REPO}
  out = subprocess.run([sys.executable, "-m", "cellvit_jax.main",
                        "--config=configs/fm.py:phikon,probe",
                        f"--config.fm.weights={weights['plip']}", f"--workdir={workdir}"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 2
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("error: config.fm.weights=") and "'clip'" in last and "'vit'" in last
  assert not workdir.exists()


def test_register_checkpoint_under_a_plain_preset_names_the_register_presets(tmp_path):
  w = fm_tiny.write_tiny("virchow2", str(tmp_path / "v2"))
  with pytest.raises(ValueError, match=r"holds a 'dinov2_registers' checkpoint \(timm\) but "
                                       r"config.fm.preset='uni' expects 'dinov2'.*"
                                       r"--config.fm.preset=uni2 \| virchow2 \| hoptimus0$"):
    _build("uni,probe", w)


def test_tiny_writer_config_is_the_published_layout(weights):
  with open(os.path.join(weights["plip"], "config.json")) as f:
    plip = json.load(f)
  assert plip["model_type"] == "clip" and plip["vision_config"]["patch_size"] == 16
  with open(os.path.join(weights["uni"], "config.json")) as f:
    assert json.load(f)["model_args"]["init_values"] == 1e-5  # timm's hub config
  keys = fm_weights.safetensors_shapes(os.path.join(weights["plip"], "model.safetensors"))
  assert "vision_model.embeddings.class_embedding" in keys and "visual_projection.weight" in keys


def test_runs_recorded_before_config_fm_still_resume():
  from cellvit_jax.config import defaults as config_defaults
  from cellvit_jax.runs import workdir as workdir_lib
  new = config_defaults.get_config().to_dict()
  old = json.loads(json.dumps(new))
  del old["fm"]
  assert workdir_lib.config_differences(old, new) == []
  new["fm"]["preset"] = "uni"
  assert workdir_lib.config_differences(old, new) == ["fm.preset"]


def test_importing_the_library_does_not_import_transformers():
  code = ("import sys; import cellvit_jax.main, cellvit_jax.modes.train, "
          "cellvit_jax.modes.finished_run, "
          "cellvit_jax.modes.probe, cellvit_jax.models, cellvit_jax.models.fm.foundation; "
          "from cellvit_jax import models; models.get_class('customvit'); "
          "print('transformers' in sys.modules, 'torch' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": REPO}, timeout=300)
  assert out.stdout.split() == ["False", "False"], out.stderr[-1000:]


def test_unknown_preset_on_the_command_line_is_one_clear_line():
  out = subprocess.run([sys.executable, "-m", "cellvit_jax.main",
                        "--config=configs/fm.py:virchow,probe"],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": REPO})
  assert out.returncode == 2
  line = out.stderr.strip().splitlines()[-1]
  assert "Traceback" not in line and line.endswith(
      "ValueError: unknown config.fm.preset 'virchow'; valid presets: gigapath, hoptimus0, "
      "phikon, phikon2, plip, uni, uni2, virchow2")


def test_convert_cli_writes_a_transformers_dir_and_names_a_bad_format(weights, tmp_path):
  def convert_cli(*flags):
    return subprocess.run([sys.executable, "-m", "cellvit_jax.models.fm.convert", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": REPO})
  out = convert_cli("--from=timm", f"--input={weights['uni']}", f"--output={tmp_path / 'hf'}")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "wrote" in out.stdout and "Dinov2Model hidden 32, 2 layers, 2 heads" in out.stdout
  with open(tmp_path / "hf" / "config.json") as f:
    assert json.load(f)["architectures"] == ["Dinov2Model"]
  bad = convert_cli("--from=hf", f"--input={weights['uni']}", f"--output={tmp_path / 'bad'}")
  assert bad.returncode == 2 and not (tmp_path / "bad").exists()
  assert bad.stderr.strip().splitlines()[-1] == ("error: --from='hf' is not supported; the "
                                                  "converter reads --from=timm")


def test_convert_cli_expands_tilde_in_path_flags(weights, tmp_path):
  # `--input=~/...`: the shell expands `~` only at the start of a word, not after `=`.
  home = tmp_path / "home"
  shutil.copytree(weights["uni"], home / "fm" / "uni")
  out = subprocess.run([sys.executable, "-m", "cellvit_jax.models.fm.convert", "--from=timm",
                        "--input=~/fm/uni", "--output=~/fm/uni_hf"], cwd=REPO,
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": REPO, "HOME": str(home)})
  assert out.returncode == 0, out.stderr[-2000:]
  assert f"wrote {home / 'fm' / 'uni_hf'}:" in out.stdout
  assert (home / "fm" / "uni_hf" / "model.safetensors").is_file()
  assert not (tmp_path / "~").exists() and not os.path.exists(os.path.join(REPO, "~"))
