"""Parity of our Flax FM path with the PyTorch reference implementations (needs the `parity`
extra: torch).  A tiny random checkpoint in each family's published format goes through
cellvit_jax (weights loader -> FoundationModel, feature only) and through transformers'
PyTorch ViTModel / Dinov2Model / CLIPVisionModel; for `uni`, also through a plain-torch
re-implementation of timm's VisionTransformer forward on the original timm state dict
(timm itself is not a dependency).  Features must agree to 1e-4."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from cellvit_jax.models.fm import convert, foundation  # noqa: E402
from cellvit_jax.models.fm import presets as fm_presets  # noqa: E402
from cellvit_jax.models.fm import tiny as fm_tiny  # noqa: E402
from cellvit_jax.models.fm import weights as fm_weights  # noqa: E402
from conftest import tiny_config  # noqa: E402

TOL = 1e-4


def _fm_config(preset, weights, **fm):
  config = tiny_config("unused")
  config.fm.preset = preset
  config.fm.weights = weights
  for k, v in fm.items():
    config.fm[k] = v
  return config


def _ours(preset, weights, images01, **fm):
  """Our features for float [0, 1] NHWC images already at the model's input size."""
  config = _fm_config(preset, weights, **fm)
  model = foundation.build(config.fm, 0, config.model.dtype)
  params = {"backbone": foundation.pretrained_backbone(config.fm, model)}
  return np.asarray(model.apply({"params": params}, jnp.asarray(images01)))


def _pixels(preset, images01):
  """The reference's input: normalised NCHW, as the publisher's image processor makes it."""
  p = fm_presets.get(preset)
  x = (images01 - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def timm_vit_forward(sd, x, num_heads, eps=1e-6, tokens=False):
  """timm VisionTransformer.forward_features + token pool (class_token, LayerScale, no fc_norm),
  with timm's register tokens (`reg_token`) and both position layouts of `_pos_embed`:
  no_embed_class (the table covers the patch grid only, added before the class and register
  tokens are prepended) or the default (the table covers class + registers + grid)."""
  sd = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
  w = sd["patch_embed.proj.weight"]
  d, patch = w.shape[0], w.shape[-1]
  x = F.conv2d(x, w, sd["patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
  b = x.shape[0]
  prefix = [sd["cls_token"].expand(b, -1, -1)]
  if "reg_token" in sd:
    prefix.append(sd["reg_token"].expand(b, -1, -1))
  if sd["pos_embed"].shape[1] == x.shape[1]:  # no_embed_class
    x = torch.cat(prefix + [x + sd["pos_embed"]], 1)
  else:
    x = torch.cat(prefix + [x], 1) + sd["pos_embed"]
  depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
  for i in range(depth):
    p = lambda name: sd[f"blocks.{i}.{name}"]
    h = F.layer_norm(x, (d,), p("norm1.weight"), p("norm1.bias"), eps)
    n = h.shape[1]
    qkv = F.linear(h, p("attn.qkv.weight"), p("attn.qkv.bias"))
    q, k, v = qkv.reshape(b, n, 3, num_heads, d // num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    attn = ((q @ k.transpose(-2, -1)) * (d // num_heads) ** -0.5).softmax(-1)
    h = F.linear((attn @ v).transpose(1, 2).reshape(b, n, d), p("attn.proj.weight"),
                 p("attn.proj.bias"))
    x = x + p("ls1.gamma") * h
    h = F.layer_norm(x, (d,), p("norm2.weight"), p("norm2.bias"), eps)
    h = F.linear(h, p("mlp.fc1.weight"), p("mlp.fc1.bias"))
    if h.shape[-1] == 2 * p("mlp.fc2.weight").shape[1]:  # SwiGLUPacked: GluMlp, SiLU, gate first
      x1, x2 = h.chunk(2, dim=-1)
      h = F.silu(x1) * x2
    else:
      h = F.gelu(h)
    h = F.linear(h, p("mlp.fc2.weight"), p("mlp.fc2.bias"))
    x = x + p("ls2.gamma") * h
  x = F.layer_norm(x, (d,), sd["norm.weight"], sd["norm.bias"], eps)
  return x if tokens else x[:, 0]


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)


def test_phikon_matches_transformers_vit(tmp_path, images):
  from transformers import ViTModel
  weights = fm_tiny.write_tiny("phikon", str(tmp_path / "phikon"))
  ref = ViTModel.from_pretrained(weights, add_pooling_layer=False).eval()
  with torch.no_grad():
    out = ref(pixel_values=_pixels("phikon", images))
  expected = out.last_hidden_state[:, 0].numpy()
  np.testing.assert_allclose(_ours("phikon", weights, images), expected, atol=TOL, rtol=0)
  tokens = out.last_hidden_state.numpy()
  both = np.concatenate([tokens[:, 0], tokens[:, 1:].mean(1)], -1)
  np.testing.assert_allclose(_ours("phikon", weights, images, feature="cls_mean"), both,
                             atol=TOL, rtol=0)


def test_plip_matches_transformers_clip_vision(tmp_path, images):
  from transformers import CLIPVisionModel
  weights = fm_tiny.write_tiny("plip", str(tmp_path / "plip"))
  ref = CLIPVisionModel.from_pretrained(weights).eval()
  with torch.no_grad():
    out = ref(pixel_values=_pixels("plip", images))
  np.testing.assert_allclose(_ours("plip", weights, images), out.pooler_output.numpy(),
                             atol=TOL, rtol=0)
  post = ref.vision_model.post_layernorm
  with torch.no_grad():
    mean_patch = post(out.last_hidden_state[:, 1:]).mean(1).numpy()
  both = np.concatenate([out.pooler_output.numpy(), mean_patch], -1)
  np.testing.assert_allclose(_ours("plip", weights, images, feature="cls_mean"), both,
                             atol=TOL, rtol=0)


def test_uni_timm_checkpoint_matches_timm_forward_and_converted_dinov2(tmp_path, images):
  from transformers import Dinov2Model
  timm_dir = fm_tiny.write_tiny("uni", str(tmp_path / "uni_timm"))
  state = fm_weights.read_safetensors(os.path.join(timm_dir, "model.safetensors"))
  assert convert.looks_like_timm(state) and "blocks.1.ls2.gamma" in state
  with torch.no_grad():
    expected = timm_vit_forward(state, _pixels("uni", images), num_heads=2).numpy()
  # The timm directory directly (converted in memory; heads from its config.json) ...
  np.testing.assert_allclose(_ours("uni", timm_dir, images), expected, atol=TOL, rtol=0)
  # ... and the converter's output, read by us and by transformers' PyTorch Dinov2Model.
  hf_dir = str(tmp_path / "uni_hf")
  arch = convert.convert("timm", timm_dir, hf_dir, num_heads=2)
  assert (arch["hidden_size"], arch["num_hidden_layers"], arch["patch_size"],
          arch["image_size"]) == (32, 2, 16, 32)
  np.testing.assert_allclose(_ours("uni", hf_dir, images), expected, atol=TOL, rtol=0)
  ref = Dinov2Model.from_pretrained(hf_dir).eval()
  with torch.no_grad():
    pooled = ref(pixel_values=_pixels("uni", images)).pooler_output.numpy()
  np.testing.assert_allclose(pooled, expected, atol=TOL, rtol=0)


def test_converter_reads_a_pytorch_pickle_and_defaults_heads_to_width_64(tmp_path):
  timm_dir = fm_tiny.write_tiny("uni", str(tmp_path / "t"), hidden=128, heads=2)
  state = fm_weights.read_safetensors(os.path.join(timm_dir, "model.safetensors"))
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
             str(tmp_path / "uni.bin"))
  arch = convert.convert("timm", str(tmp_path / "uni.bin"), str(tmp_path / "out"))
  assert arch["num_attention_heads"] == 2  # 128 / 64
  assert os.path.isfile(tmp_path / "out" / "model.safetensors")


def test_timm_vit_with_packed_swiglu_mlp_converts_exactly(tmp_path, images):
  """A Virchow-style timm ViT (SwiGLUPacked MLP) -> Dinov2Model with use_swiglu_ffn."""
  from transformers import Dinov2Model
  timm_dir = fm_tiny.write_tiny("uni", str(tmp_path / "swiglu"))
  path = os.path.join(timm_dir, "model.safetensors")
  state = fm_weights.read_safetensors(path)
  rng = np.random.default_rng(3)
  for i in range(2):  # hidden 32, SwiGLU width 64: fc1 (128, 32), fc2 (32, 64)
    state[f"blocks.{i}.mlp.fc1.weight"] = (0.05 * rng.standard_normal((128, 32))).astype(np.float32)
    state[f"blocks.{i}.mlp.fc1.bias"] = (0.05 * rng.standard_normal(128)).astype(np.float32)
    state[f"blocks.{i}.mlp.fc2.weight"] = (0.05 * rng.standard_normal((32, 64))).astype(np.float32)
  convert.write_hf_dir(timm_dir, json.load(open(os.path.join(timm_dir, "config.json"))), state)
  with torch.no_grad():
    expected = timm_vit_forward(state, _pixels("uni", images), num_heads=2).numpy()
  np.testing.assert_allclose(_ours("uni", timm_dir, images), expected, atol=TOL, rtol=0)
  hf_dir = str(tmp_path / "swiglu_hf")
  arch = convert.convert("timm", timm_dir, hf_dir, num_heads=2)
  assert arch["use_swiglu_ffn"] and arch["mlp_ratio"] == 3.0
  ref = Dinov2Model.from_pretrained(hf_dir).eval()
  with torch.no_grad():
    pooled = ref(pixel_values=_pixels("uni", images)).pooler_output.numpy()
  np.testing.assert_allclose(pooled, expected, atol=TOL, rtol=0)


TIMM_PRESETS = ("uni2", "virchow2", "hoptimus0", "gigapath")


@pytest.mark.parametrize("preset", TIMM_PRESETS)
def test_timm_layouts_match_timm_forward_and_transformers(preset, tmp_path, images):
  """Each published timm layout (register tokens or not, position table with or without the
  class and register tokens, SwiGLUPacked MLP) through our Flax path, read directly and
  after the converter, against timm's forward and transformers' PyTorch
  Dinov2WithRegistersModel / Dinov2Model on the converted directory."""
  import transformers
  layout = fm_presets.get(preset).tiny
  timm_dir = fm_tiny.write_tiny(preset, str(tmp_path / "timm"))
  state = fm_weights.read_safetensors(os.path.join(timm_dir, "model.safetensors"))
  registers = layout["registers"]
  assert ("reg_token" in state) == bool(registers)
  prefix = {"none": 0, "class": 1, "class+registers": 1 + registers}[layout["pos_prefix"]]
  assert state["pos_embed"].shape[1] == prefix + 4  # 2x2 grid
  with torch.no_grad():
    tokens = timm_vit_forward(state, _pixels(preset, images), num_heads=2, tokens=True).numpy()
  cls = tokens[:, 0]
  # The model cards' features: class token, or (Virchow2) class + mean of the patch tokens
  # with the registers left out (output[:, 1 + registers:]).
  card = (np.concatenate([cls, tokens[:, 1 + registers:].mean(1)], -1)
          if fm_presets.get(preset).feature == "cls_mean" else cls)
  np.testing.assert_allclose(_ours(preset, timm_dir, images), card, atol=TOL, rtol=0)
  np.testing.assert_allclose(_ours(preset, timm_dir, images, feature="cls"), cls, atol=TOL, rtol=0)
  hf_dir = str(tmp_path / "hf")
  arch = convert.convert("timm", timm_dir, hf_dir)  # heads from the timm config.json
  assert arch["num_attention_heads"] == 2 and arch.get("num_register_tokens", 0) == registers
  assert arch["use_swiglu_ffn"] == layout["swiglu"]
  np.testing.assert_allclose(_ours(preset, hf_dir, images), card, atol=TOL, rtol=0)
  cls_name = "Dinov2WithRegistersModel" if registers else "Dinov2Model"
  assert arch["architectures"] == [cls_name]
  ref = getattr(transformers, cls_name).from_pretrained(hf_dir).eval()
  with torch.no_grad():
    out = ref(pixel_values=_pixels(preset, images))
  # Every token, registers included, matches timm's (the register positions were folded in).
  np.testing.assert_allclose(out.last_hidden_state.numpy(), tokens, atol=TOL, rtol=0)
  np.testing.assert_allclose(out.pooler_output.numpy(), cls, atol=TOL, rtol=0)


def test_register_model_matches_transformers_at_patch_14(tmp_path):
  """Patch 14 (as UNI2-h, Virchow2, H-optimus-0 use), 3 registers, GELU MLP, qkv without
  bias: our Dinov2WithRegisters against transformers' on a directory it saved itself."""
  import transformers
  config = transformers.Dinov2WithRegistersConfig(
      hidden_size=48, num_hidden_layers=2, num_attention_heads=3, mlp_ratio=2, image_size=28,
      patch_size=14, num_register_tokens=3, qkv_bias=False, layerscale_value=0.5)
  torch.manual_seed(0)
  ref = transformers.Dinov2WithRegistersModel(config).eval()
  with torch.no_grad():
    for p in ref.parameters():
      p.add_(0.05 * torch.randn_like(p))
  ref.save_pretrained(str(tmp_path / "w"))
  x = np.random.default_rng(1).random((2, 28, 28, 3), dtype=np.float32)
  with torch.no_grad():
    expected = ref(pixel_values=_pixels("uni2", x)).last_hidden_state.numpy()
  got = _ours("uni2", str(tmp_path / "w"), x, feature="cls")
  np.testing.assert_allclose(got, expected[:, 0], atol=TOL, rtol=0)


def test_phikon2_matches_transformers_dinov2(tmp_path, images):
  from transformers import Dinov2Model
  weights = fm_tiny.write_tiny("phikon2", str(tmp_path / "phikon2"))
  ref = Dinov2Model.from_pretrained(weights).eval()
  with torch.no_grad():
    out = ref(pixel_values=_pixels("phikon2", images))
  # input_size 32: the tiny checkpoint's own size (the preset runs the published 224).
  np.testing.assert_allclose(_ours("phikon2", weights, images, input_size=32),
                             out.last_hidden_state[:, 0].numpy(), atol=TOL, rtol=0)
