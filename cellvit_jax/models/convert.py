"""timm ViT checkpoints -> transformers Dinov2Model format (a ViT with LayerScale).

    python -m cellvit_jax.models.convert --from=timm --input=uni/pytorch_model.bin --output=uni_hf

UNI (and other timm ViTs of the same layout) is published as a timm state dict; the
transformers class with the same computation is Dinov2Model (LayerScale, fused-free qkv,
GELU MLP, pre-norm blocks, final norm).  The architecture is read from the tensors
themselves: width and depth from the block weights, patch and image size from the patch
embedding and the position table, the MLP (plain GELU, or timm's packed SwiGLU as in
Virchow) from fc1/fc2; heads are hidden / 64 (the standard head width) unless
--num_heads says otherwise.  The output directory holds config.json and model.safetensors
with Dinov2Model's PyTorch key names, so transformers' Dinov2Model and our Flax path both
read it.  `config.fm.weights` may also point straight at a timm directory: the loader
runs the same conversion in memory.

Two details of transformers' Flax Dinov2 port matter: FlaxDinov2LayerScale multiplies its
parameter by config.layerscale_value twice, so we store the trained gammas as the
parameters and set layerscale_value = 1.0 (exact in both ports); and timm's LayerNorm eps
is 1e-6.
"""
import math
import os
import sys

import numpy as np

HEAD_WIDTH = 64  # ViT-B/L/H and the pathology ViTs built on them use 64-wide heads


def looks_like_timm(keys) -> bool:
  keys = set(keys)
  return "patch_embed.proj.weight" in keys and any(k.startswith("blocks.0.") for k in keys)


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


def architecture(state: dict, num_heads: int = 0, what: str = "") -> dict:
  """Dinov2Config kwargs read from a timm state dict's shapes."""
  unsupported = [k for k in ("reg_token", "blocks.0.mlp.w12.weight", "blocks.0.mlp.fc1_g.weight")
                 if k in state]
  if unsupported:
    raise ValueError(f"timm checkpoint {what} has {unsupported[0]!r} (register tokens or an "
                     "unpacked SwiGLU MLP); only the plain ViT layout (UNI's) and the packed "
                     "SwiGLU MLP (timm SwiGLUPacked) convert to Dinov2Model")
  proj = _need(state, "patch_embed.proj.weight", what)
  hidden, channels, patch, patch_w = proj.shape
  depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
  positions = _need(state, "pos_embed", what).shape[1]
  side = math.isqrt(positions - 1)
  if side * side != positions - 1 or patch != patch_w:
    raise ValueError(f"timm checkpoint {what}: pos_embed has {positions} positions and patches are "
                     f"{patch}x{patch_w}; expected 1 class position + a square grid of square "
                     "patches (no_embed_class checkpoints are not supported)")
  mlp = _need(state, "blocks.0.mlp.fc1.weight", what).shape[0]
  inner = _need(state, "blocks.0.mlp.fc2.weight", what).shape[1]
  # timm's SwiGLUPacked (GluMlp, SiLU, gate first): fc1 makes 2 x the width fc2 reads, and
  # computes silu(x1) * x2 -- Dinov2's SwiGLU FFN (weights_in / weights_out).
  swiglu = mlp == 2 * inner
  if swiglu:
    try:
      ratio = _swiglu_ratio(int(hidden), int(inner))
    except ValueError as e:
      raise ValueError(f"timm checkpoint {what}: {e}") from None
  elif mlp % hidden:
    raise ValueError(f"timm checkpoint {what}: MLP width {mlp} is not a multiple of the hidden "
                     f"size {hidden}; Dinov2Model needs an integer mlp_ratio")
  else:
    ratio = mlp // hidden
  heads = num_heads or hidden // HEAD_WIDTH
  if heads < 1 or hidden % heads:
    raise ValueError(f"--num_heads={heads} does not divide the checkpoint's hidden size {hidden}; "
                     f"pass --num_heads (a divisor of {hidden})")
  return dict(model_type="dinov2", hidden_size=int(hidden), num_hidden_layers=depth,
              num_attention_heads=int(heads), mlp_ratio=ratio, image_size=side * patch,
              patch_size=int(patch), num_channels=int(channels), layer_norm_eps=1e-6,
              layerscale_value=1.0, hidden_act="gelu", qkv_bias="blocks.0.attn.qkv.bias" in state,
              use_swiglu_ffn=swiglu, drop_path_rate=0.0, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0, architectures=["Dinov2Model"])


def timm_to_dinov2(state: dict, num_heads: int = 0, what: str = "") -> tuple:
  """(Dinov2Config kwargs, {Dinov2Model PyTorch key: float32 numpy array})."""
  arch = architecture(state, num_heads, what)
  d, out = arch["hidden_size"], {}
  f32 = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))
  out["embeddings.cls_token"] = f32(_need(state, "cls_token", what))
  out["embeddings.mask_token"] = np.zeros((1, d), np.float32)  # unused at inference
  out["embeddings.position_embeddings"] = f32(state["pos_embed"])
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
    mlp = ("mlp.weights_in", "mlp.weights_out") if arch["use_swiglu_ffn"] else ("mlp.fc1", "mlp.fc2")
    renames = {"norm1": "norm1", "attn.proj": "attention.output.dense", "norm2": "norm2",
               "mlp.fc1": mlp[0], "mlp.fc2": mlp[1]}
    for src, dst in renames.items():
      out[h + dst + ".weight"] = f32(_need(state, t + src + ".weight", what))
      out[h + dst + ".bias"] = f32(_need(state, t + src + ".bias", what))
    for k in ("1", "2"):  # no LayerScale in the checkpoint: gamma 1 is the identity
      out[h + f"layer_scale{k}.lambda1"] = f32(state.get(t + f"ls{k}.gamma", np.ones(d)))
  out["layernorm.weight"] = f32(_need(state, "norm.weight", what))
  out["layernorm.bias"] = f32(_need(state, "norm.bias", what))
  if "fc_norm.weight" in state:
    raise ValueError(f"timm checkpoint {what} has fc_norm (global average pooling); the class-token "
                     "feature of Dinov2Model would not match it")
  return arch, out


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
    from cellvit_jax.models import fm_weights
    return fm_weights.read_safetensors(path)
  try:
    import torch
  except ImportError:
    raise ValueError(f"reading {path!r} (a PyTorch pickle) needs torch: pip install "
                     "'cellvit_jax[parity]', or convert it to .safetensors first") from None
  state = torch.load(path, map_location="cpu", weights_only=True)
  state = state.get("state_dict", state.get("model", state))
  return {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}


def write_hf_dir(output: str, config: dict, tensors: dict):
  """config.json + model.safetensors, each written atomically."""
  from safetensors.numpy import save_file
  os.makedirs(output, exist_ok=True)
  from cellvit_jax import workdir as workdir_lib
  with workdir_lib.atomic_path(os.path.join(output, "model.safetensors")) as tmp:
    save_file(tensors, tmp, metadata={"format": "pt"})
  workdir_lib.write_json(output, "config.json", config)


def convert(source: str, input_path: str, output: str, num_heads: int = 0) -> dict:
  if source != "timm":
    raise ValueError(f"--from={source!r} is not supported; the converter reads --from=timm")
  if not output:
    raise ValueError("--output is empty; pass the directory to write config.json and "
                     "model.safetensors into")
  arch, tensors = timm_to_dinov2(read_state_dict(input_path), num_heads, repr(input_path))
  write_hf_dir(output, arch, tensors)
  return arch


def main(argv=None):
  import argparse
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--from", dest="source", default="timm")
  p.add_argument("--input", required=True)
  p.add_argument("--output", required=True)
  p.add_argument("--num_heads", type=int, default=0, help="default: hidden size / 64")
  a = p.parse_args(argv)
  try:
    arch = convert(a.source, a.input, a.output, a.num_heads)
  except (ValueError, OSError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  print(f"wrote {a.output}: Dinov2Model hidden {arch['hidden_size']}, {arch['num_hidden_layers']} "
        f"layers, {arch['num_attention_heads']} heads, patch {arch['patch_size']}, image "
        f"{arch['image_size']}")


if __name__ == "__main__":
  main()
