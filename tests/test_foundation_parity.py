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

from cellvit_jax.models import convert, fm_presets, fm_weights, foundation  # noqa: E402
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
  model = foundation.build(config, 0)
  params = {"backbone": foundation.pretrained_backbone(config, model)}
  return np.asarray(model.apply({"params": params}, jnp.asarray(images01)))


def _pixels(preset, images01):
  """The reference's input: normalised NCHW, as the publisher's image processor makes it."""
  p = fm_presets.get(preset)
  x = (images01 - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def timm_vit_forward(sd, x, num_heads, eps=1e-6):
  """timm VisionTransformer.forward_features + token pool (class_token, LayerScale, no fc_norm)."""
  sd = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
  w = sd["patch_embed.proj.weight"]
  d, patch = w.shape[0], w.shape[-1]
  x = F.conv2d(x, w, sd["patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
  b = x.shape[0]
  x = torch.cat([sd["cls_token"].expand(b, -1, -1), x], 1) + sd["pos_embed"]
  depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
  for i in range(depth):
    p = lambda name: sd[f"blocks.{i}.{name}"]
    h = F.layer_norm(x, (d,), p("norm1.weight"), p("norm1.bias"), eps)
    n = h.shape[1]
    qkv = F.linear(h, p("attn.qkv.weight"), p("attn.qkv.bias"))
    q, k, v = qkv.reshape(b, n, 3, num_heads, d // num_heads).permute(2, 0, 3, 1, 4).unbind(0)
    attn = ((q @ k.transpose(-2, -1)) * (d // num_heads) ** -0.5).softmax(-1)
    h = F.linear((attn @ v).transpose(1, 2).reshape(b, n, d), p("attn.proj.weight"), p("attn.proj.bias"))
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
  return x[:, 0]


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)


def test_phikon_matches_transformers_vit(tmp_path, images):
  from transformers import ViTModel
  weights = foundation.write_tiny("phikon", str(tmp_path / "phikon"))
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
  weights = foundation.write_tiny("plip", str(tmp_path / "plip"))
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
  timm_dir = foundation.write_tiny("uni", str(tmp_path / "uni_timm"))
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
  timm_dir = foundation.write_tiny("uni", str(tmp_path / "t"), hidden=128, heads=2)
  state = fm_weights.read_safetensors(os.path.join(timm_dir, "model.safetensors"))
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, str(tmp_path / "uni.bin"))
  arch = convert.convert("timm", str(tmp_path / "uni.bin"), str(tmp_path / "out"))
  assert arch["num_attention_heads"] == 2  # 128 / 64
  assert os.path.isfile(tmp_path / "out" / "model.safetensors")


def test_timm_vit_with_packed_swiglu_mlp_converts_exactly(tmp_path, images):
  """A Virchow-style timm ViT (SwiGLUPacked MLP) -> Dinov2Model with use_swiglu_ffn."""
  from transformers import Dinov2Model
  timm_dir = foundation.write_tiny("uni", str(tmp_path / "swiglu"))
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
