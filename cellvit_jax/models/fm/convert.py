"""timm ViT checkpoints -> transformers Dinov2Model / Dinov2WithRegistersModel format.

    python -m cellvit_jax.models.fm.convert --from=timm --input=uni/pytorch_model.bin \
        --output=uni_hf

The pathology ViTs published as timm state dicts (UNI, UNI2-h, Virchow2, H-optimus-0,
Prov-GigaPath) all compute what transformers' Dinov2Model computes (pre-norm blocks,
LayerScale, final norm), plus, for the register-token ones, what Dinov2WithRegistersModel
adds (register tokens inserted after the class token, after the position embedding).
The architecture is read from the tensors themselves: width and patch from the patch
embedding, depth from the block keys, register count from `reg_token`, the MLP (plain
GELU, or timm's packed SwiGLU: fc1 makes twice the width fc2 reads) from fc1/fc2, and
which tokens the position table covers from its length:

  grid only          timm no_embed_class=True (UNI2-h, H-optimus-0): the class token gets no
                     position; written as a class row of zeros (exact).
  class + grid       plain timm ViT (UNI, Prov-GigaPath): as transformers stores it.
  class + registers  timm default with reg_tokens (Virchow2): the registers' positions are
  + grid             constants added to constants, so they are folded into the register
                     tokens (exact; transformers adds no position to registers).

Heads: --num_heads, else the timm config.json's model_args.num_heads, else hidden / 64
(the head width of ViT-B/L/g) except 16 for hidden 1280 (ViT-H/14: Virchow, Virchow2).
Any tensor this layout cannot express (fc_norm, q/k norms, an unpacked SwiGLU, ...) is
refused with one line naming it; a classifier head (`head.*`) is dropped: we read the
features before it.  The output directory holds config.json and model.safetensors with
transformers' PyTorch key names, readable by transformers and by our Flax path;
`config.fm.weights` may also point straight at a timm directory (converted in memory).

Two details of the Flax side matter: transformers' FlaxDinov2LayerScale multiplies its
parameter by config.layerscale_value twice, so we store the trained gammas as the
parameters and set layerscale_value = 1.0 (exact in all ports); timm's LayerNorm eps is 1e-6.
"""
import json
import math
import os
import sys

import numpy as np
from absl import app, flags

from cellvit_jax import atomic_files

HEAD_WIDTH = 64  # ViT-B/L/g and the pathology ViTs built on them use 64-wide heads
# Widths whose standard ViT does not use 64-wide heads: ViT-H/14 has 16 heads of 80.
HEADS_BY_WIDTH = {1280: 16}
_BLOCK_KEYS = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
               "attn.proj.weight", "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias",
               "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma")
_TOP_KEYS = ("cls_token", "reg_token", "pos_embed", "patch_embed.proj.weight",
             "patch_embed.proj.bias", "norm.weight", "norm.bias")


def looks_like_timm(keys) -> bool:
  keys = set(keys)
  return "patch_embed.proj.weight" in keys and any(k.startswith("blocks.0.") for k in keys)


def default_heads(hidden: int) -> int:
  return HEADS_BY_WIDTH.get(int(hidden), int(hidden) // HEAD_WIDTH)


def _need(state, key, what):
  if key not in state:
    raise ValueError(f"timm checkpoint {what} has no tensor {key!r}; expected a timm "
                     "VisionTransformer state dict (patch_embed.proj.weight, cls_token, pos_embed, "
                     "blocks.N.*, norm.*)")
  return state[key]  # an array, or (from a header) anything with a .shape


def _swiglu_ratio(hidden: int, width: int) -> float:
  """The Dinov2Config.mlp_ratio whose SwiGLU width formula gives `width`, if there is one."""
  ratio = 1.5 * width / hidden
  if (int(int(hidden * ratio) * 2 / 3) + 7) // 8 * 8 != width:
    raise ValueError(f"SwiGLU MLP width {width} (hidden {hidden}) is not one Dinov2Model's "
                     "width formula (a multiple of 8) can express")
  return ratio


def _refuse_unknown(state, depth, what):
  """One line naming the first tensor the Dinov2(-with-registers) layout cannot express."""
  known = set(_TOP_KEYS) | {f"blocks.{i}.{k}" for i in range(depth) for k in _BLOCK_KEYS}
  for key in sorted(state):
    if key in known or key.startswith("head."):
      continue
    why = {"fc_norm": "global average pooling, whose feature is not the class token",
           "fc1_g": "an unpacked SwiGLU MLP (timm SwiGLU); only SwiGLUPacked converts",
           "fc1_x": "an unpacked SwiGLU MLP (timm SwiGLU); only SwiGLUPacked converts",
           "w12": "an unpacked SwiGLU MLP (timm SwiGLU); only SwiGLUPacked converts",
           "q_norm": "query/key normalisation", "k_norm": "query/key normalisation",
           "norm_pre": "a pre-norm before the blocks (CLIP-style)"}
    reason = next((v for k, v in why.items() if k in key), "a part")
    raise ValueError(f"timm checkpoint {what} has tensor {key!r} ({reason}), which "
                     "Dinov2Model / Dinov2WithRegistersModel cannot express; only plain timm "
                     "ViTs (LayerScale, GELU or packed SwiGLU MLP, optional register tokens) "
                     "convert")


def _prefix_layout(positions: int, registers: int, what: str) -> tuple:
  """(tokens before the grid in pos_embed, grid side): 1 + registers (timm's default) or 0
  (no_embed_class), or 1 without registers."""
  for prefix in ((1 + registers, 0) if registers else (1, 0)):
    side = math.isqrt(max(positions - prefix, 0))
    if side > 0 and side * side == positions - prefix:
      return prefix, side
  covers = f"1 class + {registers} register + " if registers else "1 class + "
  raise ValueError(f"timm checkpoint {what}: pos_embed has {positions} positions, neither a "
                   f"square grid nor {covers}a square grid; cannot tell which tokens it covers")


def architecture(state: dict, num_heads: int = 0, what: str = "") -> dict:
  """transformers config kwargs (Dinov2Config or Dinov2WithRegistersConfig) from a timm
  state dict's shapes (arrays, or anything with a .shape)."""
  proj = _need(state, "patch_embed.proj.weight", what)
  _need(state, "cls_token", what)  # class-token features need one
  hidden, channels, patch, patch_w = proj.shape
  if patch != patch_w:
    raise ValueError(f"timm checkpoint {what}: patch_embed.proj.weight has {patch}x{patch_w} "
                     "patches; only square patches convert")
  depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
  _refuse_unknown(state, depth, what)
  registers = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
  positions = _need(state, "pos_embed", what).shape[1]
  _, side = _prefix_layout(positions, registers, what)
  mlp = _need(state, "blocks.0.mlp.fc1.weight", what).shape[0]
  inner = _need(state, "blocks.0.mlp.fc2.weight", what).shape[1]
  # timm's SwiGLUPacked (GluMlp, SiLU, gate first): fc1 makes 2 x the width fc2 reads, and
  # computes silu(x1) * x2 -- Dinov2's SwiGLU FFN (weights_in / weights_out).
  swiglu = mlp == 2 * inner
  if swiglu:
    try:
      ratio = _swiglu_ratio(int(hidden), int(inner))
    except ValueError as e:
      raise ValueError(f"timm checkpoint {what}: blocks.0.mlp.fc2.weight: {e}") from None
  elif mlp % hidden:
    raise ValueError(f"timm checkpoint {what}: blocks.0.mlp.fc1.weight has MLP width {mlp}, "
                     f"not a multiple of the hidden size {hidden}; "
                     "Dinov2Model needs an integer mlp_ratio")
  else:
    ratio = mlp // hidden
  heads = num_heads or default_heads(hidden)
  if heads < 1 or hidden % heads:
    raise ValueError(f"--num_heads={heads} does not divide the checkpoint's hidden size {hidden}; "
                     f"pass --num_heads (a divisor of {hidden})")
  arch = dict(model_type="dinov2", hidden_size=int(hidden), num_hidden_layers=depth,
              num_attention_heads=int(heads), mlp_ratio=ratio, image_size=side * int(patch),
              patch_size=int(patch), num_channels=int(channels), layer_norm_eps=1e-6,
              layerscale_value=1.0, hidden_act="gelu", qkv_bias="blocks.0.attn.qkv.bias" in state,
              use_swiglu_ffn=swiglu, drop_path_rate=0.0, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0, architectures=["Dinov2Model"])
  if registers:
    arch.update(model_type="dinov2_with_registers", num_register_tokens=registers,
                architectures=["Dinov2WithRegistersModel"])
  return arch


def timm_to_dinov2(state: dict, num_heads: int = 0, what: str = "") -> tuple:
  """(config kwargs, {Dinov2Model / Dinov2WithRegistersModel PyTorch key: float32 array})."""
  arch = architecture(state, num_heads, what)
  d, out = arch["hidden_size"], {}
  registers = arch.get("num_register_tokens", 0)
  f32 = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))
  pos = f32(state["pos_embed"])
  prefix, _ = _prefix_layout(pos.shape[1], registers, what)
  cls_pos = pos[:, :1] if prefix else np.zeros((1, 1, d), np.float32)
  out["embeddings.cls_token"] = f32(state["cls_token"])
  out["embeddings.mask_token"] = np.zeros((1, d), np.float32)  # unused at inference
  out["embeddings.position_embeddings"] = f32(np.concatenate([cls_pos, pos[:, prefix:]], 1))
  if registers:  # their positions (if the table has them) are constants: fold them in
    reg_pos = pos[:, 1:1 + registers] if prefix else 0.0
    out["embeddings.register_tokens"] = f32(state["reg_token"] + reg_pos)
  out["embeddings.patch_embeddings.projection.weight"] = f32(state["patch_embed.proj.weight"])
  out["embeddings.patch_embeddings.projection.bias"] = f32(
      state.get("patch_embed.proj.bias", np.zeros(d)))
  for i in range(arch["num_hidden_layers"]):
    t, h = f"blocks.{i}.", f"encoder.layer.{i}."
    qkv_w = _need(state, t + "attn.qkv.weight", what)
    qkv_b = state.get(t + "attn.qkv.bias", np.zeros(3 * d))
    for j, name in enumerate(("query", "key", "value")):
      out[h + f"attention.attention.{name}.weight"] = f32(qkv_w[j * d:(j + 1) * d])
      out[h + f"attention.attention.{name}.bias"] = f32(qkv_b[j * d:(j + 1) * d])
    mlp = (("mlp.weights_in", "mlp.weights_out") if arch["use_swiglu_ffn"]
           else ("mlp.fc1", "mlp.fc2"))
    renames = {"norm1": "norm1", "attn.proj": "attention.output.dense", "norm2": "norm2",
               "mlp.fc1": mlp[0], "mlp.fc2": mlp[1]}
    for src, dst in renames.items():
      out[h + dst + ".weight"] = f32(_need(state, t + src + ".weight", what))
      out[h + dst + ".bias"] = f32(_need(state, t + src + ".bias", what))
    for k in ("1", "2"):  # no LayerScale in the checkpoint: gamma 1 is the identity
      out[h + f"layer_scale{k}.lambda1"] = f32(state.get(t + f"ls{k}.gamma", np.ones(d)))
  out["layernorm.weight"] = f32(_need(state, "norm.weight", what))
  out["layernorm.bias"] = f32(_need(state, "norm.bias", what))
  return arch, out


def _open_safetensors(path: str):
  """safetensors.safe_open (lazy: the header now, tensors on request), its errors made ours."""
  from safetensors import SafetensorError, safe_open  # deferred: only FM code reads weights
  try:
    return safe_open(path, framework="flax")  # flax: handles bf16, which numpy lacks
  except SafetensorError as e:
    raise ValueError(f"weights file {path!r} is truncated or not a safetensors file "
                     f"({os.path.getsize(path)} bytes; {e}); download it again") from None


def safetensors_shapes(path: str) -> dict:
  """name -> shape of every tensor in a .safetensors file, read from its header only (the
  file's length is checked against the header, so a truncated download is caught here)."""
  with _open_safetensors(path) as f:
    return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def read_safetensors(path: str) -> dict:
  """name -> float32 numpy array (bf16/f16 upcast), without torch."""
  out = {}
  with _open_safetensors(path) as f:
    for k in f.keys():
      out[k] = np.asarray(f.get_tensor(k), np.float32)
  return out


def read_state_dict(path: str) -> dict:
  """A timm checkpoint file (.safetensors without torch; .bin/.pth/.pt with torch) -> numpy."""
  if os.path.isdir(path):
    for name in ("model.safetensors", "pytorch_model.bin"):
      if os.path.isfile(os.path.join(path, name)):
        return read_state_dict(os.path.join(path, name))
    raise FileNotFoundError(f"--input {path!r} holds neither model.safetensors nor "
                            "pytorch_model.bin; pass the checkpoint file")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--input {path!r} does not exist; pass the timm checkpoint file")
  if path.endswith(".safetensors"):
    return read_safetensors(path)
  try:
    import torch
  except ImportError:
    raise ValueError(f"reading {path!r} (a PyTorch pickle) needs torch: pip install "
                     "'cellvit_jax[parity]', or convert it to .safetensors first") from None
  state = torch.load(path, map_location="cpu", weights_only=True)
  state = state.get("state_dict", state.get("model", state))
  return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}


def timm_config_heads(path: str) -> int:
  """model_args.num_heads of the timm config.json beside `path` (a file or its directory); 0
  when there is none."""
  directory = path if os.path.isdir(path) else os.path.dirname(path)
  try:
    with open(os.path.join(directory, "config.json")) as f:
      return int(json.load(f).get("model_args", {}).get("num_heads", 0) or 0)
  except (OSError, ValueError, AttributeError):
    return 0


def write_hf_dir(output: str, hf_config: dict, tensors: dict):
  """config.json + model.safetensors, each written atomically."""
  from safetensors.numpy import save_file
  os.makedirs(output, exist_ok=True)
  with atomic_files.atomic_path(os.path.join(output, "model.safetensors")) as tmp:
    save_file(tensors, tmp, metadata={"format": "pt"})
  atomic_files.write_json(output, "config.json", hf_config)


def convert(source: str, input_path: str, output: str, num_heads: int = 0) -> dict:
  if source != "timm":
    raise ValueError(f"--from={source!r} is not supported; the converter reads --from=timm")
  if not output:
    raise ValueError("--output is empty; pass the directory to write config.json and "
                     "model.safetensors into")
  # The shell leaves `~` after `--input=` alone, so expand it here, as main and data_prep do.
  input_path, output = os.path.expanduser(input_path), os.path.expanduser(output)
  num_heads = num_heads or timm_config_heads(input_path)
  arch, tensors = timm_to_dinov2(read_state_dict(input_path), num_heads, repr(input_path))
  write_hf_dir(output, arch, tensors)
  return arch


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; flags only (--from, --input, "
                         "--output, --num_heads)")
  f = flags.FLAGS
  try:
    arch = convert(f["from"].value, f.input, f.output, f.num_heads)
  except (ValueError, OSError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {os.path.expanduser(f.output)}: {arch['architectures'][0]} hidden "
        f"{arch['hidden_size']}, {arch['num_hidden_layers']} layers, "
        f"{arch['num_attention_heads']} heads, patch {arch['patch_size']}, "
        f"image {arch['image_size']}")


if __name__ == "__main__":
  # Flags only when run as a program: the library imports this module, and absl flags are
  # process-wide (another module's --output would clash).
  flags.DEFINE_string("from", "timm", "Checkpoint format to read (timm).")
  flags.DEFINE_string("input", None, "A timm state dict file, or a directory holding one.")
  flags.DEFINE_string("output", None, "Directory to write config.json + model.safetensors to.")
  flags.DEFINE_integer("num_heads", 0, "Attention heads; default: the timm config.json's, else "
                       "hidden size / 64 (16 for hidden 1280, ViT-H).")
  flags.mark_flags_as_required(["input", "output"])
  app.run(main)
