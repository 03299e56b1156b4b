"""Foundation-model weights from a local directory or a hub id: what they hold, and their
tensors as Flax params.  A hub id (owner/name[@revision]) is fetched into the Hugging Face
cache by models/fm/hub.py and then read as the directory it lands in.

A weights directory is what the model's publisher ships: config.json plus model.safetensors
(PyTorch key names; read with numpy, no torch) or flax_model.msgpack (a Flax params tree).
The architecture comes from the directory itself: config.json for transformers models, the
tensor shapes for timm checkpoints (UNI), converted in memory by models/fm/convert.py.  Every
mismatch is a one-line error naming the directory and both sides.
"""
import dataclasses
import functools
import hashlib
import json
import os

import numpy as np
from flax import serialization, traverse_util

from cellvit_jax.models.fm import convert
from cellvit_jax.models.fm import hub as fm_hub
from cellvit_jax.models.fm import presets as fm_presets
# Reading a .safetensors file lives with the converter (it needs it too, and this module
# builds on the converter); the names stay importable from here.
from cellvit_jax.models.fm.convert import read_safetensors, safetensors_shapes  # noqa: F401

# config.json model_type -> the family whose Flax port runs it.
MODEL_TYPES = {"vit": "vit", "dinov2": "dinov2", "clip": "clip", "clip_vision_model": "clip",
               "dinov2_with_registers": "dinov2_registers"}
# Prefixes a model-with-head checkpoint puts before the backbone's keys.
STRIP_PREFIXES = ("vit.", "dinov2.", "dinov2_with_registers.", "model.")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  directory: str
  family: str        # 'vit' | 'dinov2' | 'dinov2_registers' | 'clip'
  fmt: str           # 'safetensors' | 'msgpack'
  path: str          # the weights file
  hf_config: object  # the backbone's transformers config (ViTConfig, Dinov2Config,
  #                    Dinov2WithRegistersConfig, CLIPVisionConfig)
  timm: bool = False

  @property
  def image_size(self) -> int:
    return int(self.hf_config.image_size)

  @property
  def patch_size(self) -> int:
    return int(self.hf_config.patch_size)

  @property
  def num_registers(self) -> int:
    return int(getattr(self.hf_config, "num_register_tokens", 0) or 0)

  def describe(self) -> str:
    c = self.hf_config
    regs = f", {self.num_registers} registers" if self.num_registers else ""
    return (f"{self.family} hidden {c.hidden_size}, {c.num_hidden_layers} layers, "
            f"{c.num_attention_heads} heads, patch {c.patch_size}, image {c.image_size}{regs}")


def hf_config(family: str, raw: dict):
  """The backbone's transformers config object of `family` from config.json-style kwargs."""
  import transformers
  raw = {k: v for k, v in raw.items() if k not in ("transformers_version",)}
  if family == "vit":
    return transformers.ViTConfig(**raw)
  if family == "dinov2":
    # transformers' FlaxDinov2LayerScale multiplies its parameter by layerscale_value twice;
    # the stored lambda1 already is the trained gamma (PyTorch uses it as is), so 1.0 makes the
    # Flax port exact.  The mask token is unused without masking: not required.
    return transformers.Dinov2Config(**{**raw, "layerscale_value": 1.0, "use_mask_token": False})
  if family == "dinov2_registers":  # run by our own Flax module (models/fm/dinov2_registers.py)
    return transformers.Dinov2WithRegistersConfig(**raw)
  if raw.get("model_type") == "clip":
    return transformers.CLIPConfig(**raw).vision_config
  return transformers.CLIPVisionConfig(**raw)


def _weights_file(directory: str) -> tuple:
  for name, fmt in (("model.safetensors", "safetensors"), ("flax_model.msgpack", "msgpack")):
    if os.path.isfile(os.path.join(directory, name)):
      return os.path.join(directory, name), fmt
  present = sorted(os.listdir(directory))[:8]
  hint = ""
  if "pytorch_model.bin" in present:
    hint = (" (it has pytorch_model.bin: a timm checkpoint converts with python -m "
            "cellvit_jax.models.fm.convert --from=timm --input=... --output=...; a transformers "
            "one is re-saved with safe_serialization=True)")
  raise FileNotFoundError(f"config.fm.weights={directory!r} has no model.safetensors or "
                          f"flax_model.msgpack (it holds {present}){hint}")


@functools.lru_cache(maxsize=8)
def _inspect(directory: str, stamp: tuple, expected_family: str, preset_name: str, num_heads: int):
  del stamp  # part of the cache key only: a rewritten directory is read again
  path, fmt = _weights_file(directory)
  config_path = os.path.join(directory, "config.json")
  raw = {}
  if os.path.isfile(config_path):
    try:
      with open(config_path) as f:
        raw = json.load(f)
    except ValueError as e:
      raise ValueError(f"{config_path!r} is not valid JSON ({e}); download it again") from None
  # The header is read (and the file's length checked) now, before any run writes a file.
  header = safetensors_shapes(path) if fmt == "safetensors" else None
  timm = "model_type" not in raw
  if timm:  # a timm checkpoint: architecture from its tensor shapes
    if fmt != "safetensors":
      raise ValueError(f"config.fm.weights={directory!r} has no config.json with a model_type and "
                       "no model.safetensors; cannot tell the architecture")
    if not convert.looks_like_timm(header):
      raise ValueError(f"config.fm.weights={directory!r}: config.json has no model_type and "
                       f"{os.path.basename(path)} is not a timm ViT state dict; point it at the "
                       f"published {preset_name} directory")
    shapes = {k: np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), shape, (0,) * len(shape))
              for k, shape in header.items()}  # shapes only: zero-stride views allocate nothing
    heads = num_heads or int(raw.get("model_args", {}).get("num_heads", 0) or 0)
    raw = convert.architecture(shapes, heads, repr(path))
  family = MODEL_TYPES.get(raw["model_type"])
  if family is None:
    raise ValueError(f"config.fm.weights={directory!r} holds a {raw['model_type']!r} model; "
                     f"preset {preset_name!r} needs a {expected_family!r} one")
  if family != expected_family:
    matching = [n for n, p in _presets().items() if p.family == family]
    raise ValueError(
        f"config.fm.weights={directory!r} holds a {family!r} checkpoint "
        f"({'timm' if timm else 'config.json model_type ' + repr(raw['model_type'])}) but "
        f"config.fm.preset={preset_name!r} expects {expected_family!r}; point it at the "
        f"{preset_name} weights" + (f" or use --config.fm.preset={' | '.join(matching)}"
                                    if matching else ""))
  return Checkpoint(directory=directory, family=family, fmt=fmt, path=path,
                    hf_config=hf_config(family, raw), timm=timm)


def _presets():
  return fm_presets.PRESETS


def inspect(directory: str, preset, num_heads: int = 0) -> Checkpoint:
  """What `directory` (a local directory or a hub id) holds, checked against `preset`'s family
  (reads headers only)."""
  if not directory:
    raise ValueError(f"config.fm.weights is empty; pass --config.fm.weights={preset.hub_id} (the "
                     f"hub id) or a local directory, or write a tiny random one: python -m "
                     f"cellvit_jax.models.fm.tiny --tiny={preset.name} --output=DIR")
  if fm_hub.is_hub_id(directory):  # owner/name[@revision]: fetched into the HF cache
    directory = fm_hub.resolve(directory, preset.name)
  directory = os.path.abspath(os.path.expanduser(directory))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"config.fm.weights={directory!r} is not a directory; pass the hub id "
                            f"(--config.fm.weights={preset.hub_id}) or a local directory")
  files = [os.path.join(directory, n) for n in ("config.json", "model.safetensors",
                                                "flax_model.msgpack")]
  stamp = tuple((os.path.getsize(f), os.path.getmtime(f)) if os.path.exists(f) else None
                for f in files)
  return _inspect(directory, stamp, preset.family, preset.name, int(num_heads))


@functools.lru_cache(maxsize=4)
def _hash(path: str, stamp: tuple) -> str:
  del stamp
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 23), b""):
      h.update(block)
  return h.hexdigest()


def weights_hash(ckpt: Checkpoint) -> str:
  """sha256 of the weights file (cached per file size and mtime within a process)."""
  st = os.stat(ckpt.path)
  return _hash(ckpt.path, (st.st_size, st.st_mtime_ns))


def load_params(ckpt: Checkpoint, abstract: dict) -> dict:
  """The checkpoint's tensors as a Flax params tree shaped like `abstract` (numpy float32)."""
  # Deferred: importing transformers takes seconds, and only loading FM weights needs it.
  from transformers.modeling_flax_pytorch_utils import rename_key_and_reshape_tensor
  want = traverse_util.flatten_dict(abstract)
  if ckpt.fmt == "msgpack":
    with open(ckpt.path, "rb") as f:
      try:
        tree = serialization.msgpack_restore(f.read())
      except Exception as e:
        raise ValueError(f"weights file {ckpt.path!r} is not a readable Flax msgpack ({e}); "
                         "download it again") from None
    flat = traverse_util.flatten_dict(tree.get("params", tree))
    got = {k: np.asarray(v, np.float32) for k, v in flat.items()}
  else:
    state = read_safetensors(ckpt.path)
    if ckpt.timm:
      _, state = convert.timm_to_dinov2(state, ckpt.hf_config.num_attention_heads, repr(ckpt.path))
    got = {}
    for name, tensor in state.items():
      for candidate in [name] + [name[len(p):] for p in STRIP_PREFIXES if name.startswith(p)]:
        key, value = rename_key_and_reshape_tensor(tuple(candidate.split(".")), tensor, want,
                                                   "__none__")
        if key in want:
          got[key] = value
          break
  params = {}
  for key, spec in want.items():
    if key not in got:
      missing = [".".join(k) for k in want if k not in got]
      raise ValueError(f"config.fm.weights={ckpt.directory!r}: {os.path.basename(ckpt.path)} lacks "
                       f"{len(missing)} tensor(s) the {ckpt.describe()} model needs, e.g. "
                       f"{missing[:3]}; the weights are of another model or incomplete")
    if tuple(got[key].shape) != tuple(spec.shape):
      raise ValueError(
          f"config.fm.weights={ckpt.directory!r}: tensor {'.'.join(key)} has shape "
          f"{tuple(got[key].shape)} in {os.path.basename(ckpt.path)} but "
          f"{'the tensor shapes' if ckpt.timm else 'config.json'} describe {ckpt.describe()}, "
          f"which needs {tuple(spec.shape)}; "
          "config.json and the weights come from different models")
    params[key] = np.ascontiguousarray(got[key], np.float32)
  return traverse_util.unflatten_dict(params)


def to_pytorch_names(params: dict, prefix: str = "") -> dict:
  """A Flax params tree -> {PyTorch key: numpy}, the inverse of transformers' renaming
  (kernel -> weight transposed, LayerNorm scale / Embed embedding -> weight)."""
  out = {}
  for key, v in traverse_util.flatten_dict(params).items():
    v, leaf = np.asarray(v, np.float32), key[-1]
    if leaf == "kernel":
      v, leaf = (v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T), "weight"
    elif leaf in ("scale", "embedding"):
      leaf = "weight"
    out[prefix + ".".join(key[:-1] + (leaf,))] = np.ascontiguousarray(v)
  return out
