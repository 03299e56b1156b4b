"""The pathology foundation models (FMs) we compare against, one preset each.

The paper's FMs are not public (only its abstract is); these eight are OUR choice: real,
published pathology models, fetched by hub id (config.fm.weights=owner/name, cached by
huggingface_hub) or read from a local directory.  Each number below names where it comes
from.  Pure Python: importing this file imports no model code.

  family     which Flax module runs it: 'vit' (transformers' FlaxViTModule), 'dinov2'
             (FlaxDinov2Module: a ViT with LayerScale; timm checkpoints are converted to it
             by models/fm/convert.py), 'dinov2_registers' (our models/fm/dinov2_registers.py, the
             timm register-token ViTs converted the same way) or 'clip' (FlaxCLIPVisionModule).
  mean/std   the normalisation the model was trained with, applied inside the model after
             the 40 -> input-size resize.
  feature    what the probe and the fine-tuning head read: 'cls' (the class token after
             the final norm) or 'cls_mean' (class token + mean patch token, concatenated;
             register tokens are in neither).
  resize     the interpolation of the model's own published preprocessing.
  input_size the side the model runs at; 0: the checkpoint's own image size.
  arch       the published architecture as transformers config kwargs: the cost table
             builds the real-size model from it with no weights (experiments/cost.py).
  tiny       the layout of `--tiny=NAME` random checkpoints: the published format at toy size.
"""
import dataclasses

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# OpenAI CLIP's constants (openai/CLIP clip.py `_transform`, and CLIPImageProcessor's defaults).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# Published ViT sizes as transformers config kwargs (hidden, depth, heads, MLP).
_VIT_B = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
_VIT_L = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, mlp_ratio=4)
# ViT-g/14 of DINOv2 (timm vit_giant_patch14_dinov2): hidden 1536, 40 blocks, 24 heads,
# SwiGLUPacked MLP with mlp_ratio 2.66667 * 2 -> fc1 8192, fc2 reads 4096 (Dinov2 ratio 4.0).
_VIT_G = dict(hidden_size=1536, num_hidden_layers=40, num_attention_heads=24, mlp_ratio=4.0,
              use_swiglu_ffn=True)
_TIMM = dict(layer_norm_eps=1e-6, layerscale_value=1.0, qkv_bias=True, image_size=224)


@dataclasses.dataclass(frozen=True)
class Preset:
  name: str
  family: str           # 'vit' | 'dinov2' | 'dinov2_registers' | 'clip'
  hub_id: str           # where the published weights live
  published: str        # the published architecture, for messages and docs
  mean: tuple
  std: tuple
  feature: str
  resize: str           # 'bilinear' | 'bicubic'
  sources: dict         # field -> where its value comes from
  arch: dict = dataclasses.field(default_factory=dict)
  tiny: dict = dataclasses.field(default_factory=dict)
  input_size: int = 0
  gated: bool = False   # not an anonymous download: the hub page asks you to log in or agree
                        # to terms first, so downloads need HF_TOKEN


PRESETS = {
    "phikon": Preset(
        name="phikon", family="vit", hub_id="owkin/phikon",
        published="ViT-B/16 (hidden 768, 12 layers, 12 heads, 224 px), transformers ViTModel",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, feature="cls", resize="bilinear",
        sources={
            "mean/std": "owkin/phikon preprocessor_config.json (ViTImageProcessor, ImageNet "
                        "image_mean/image_std)",
            "feature": "phikon model card: features = outputs.last_hidden_state[:, 0, :]",
            "resize": "ViTImageProcessor resample=2 (PIL bilinear) to 224x224",
        },
        arch=dict(model_type="vit", **_VIT_B, patch_size=16, image_size=224),
        tiny=dict(format="transformers")),
    "uni": Preset(
        name="uni", family="dinov2", hub_id="MahmoodLab/UNI",
        published="timm ViT-L/16 with LayerScale (init_values 1e-5; hidden 1024, 24 layers, "
                  "16 heads, 224 px), converted to Dinov2Model (patch 16)",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, feature="cls", resize="bilinear",
        sources={
            "mean/std": "UNI model card: transforms.Normalize(mean=(0.485, 0.456, 0.406), "
                        "std=(0.229, 0.224, 0.225))",
            "feature": "UNI model card: timm.create_model(..., num_classes=0) -> class token "
                       "after the final norm (global_pool='token')",
            "resize": "UNI model card: transforms.Resize(224) (torchvision default bilinear)",
        },
        arch=dict(model_type="dinov2", **_VIT_L, patch_size=16, **_TIMM),
        tiny=dict(format="timm", architecture="vit_large_patch16_224", registers=0,
                  pos_prefix="class", swiglu=False),
        gated=True),
    "plip": Preset(
        name="plip", family="clip", hub_id="vinid/plip",
        published="CLIP ViT-B/32 image tower (hidden 768, 12 layers, 12 heads, 224 px), "
                  "transformers CLIPModel",
        mean=CLIP_MEAN, std=CLIP_STD, feature="cls", resize="bicubic",
        sources={
            "mean/std": "vinid/plip preprocessor_config.json (CLIPImageProcessor, OpenAI CLIP "
                        "image_mean/image_std)",
            "feature": "CLIPVisionModel pooler_output: the class token after post_layernorm, "
                       "the input of CLIPModel.get_image_features' visual_projection (we probe "
                       "the 768-d representation before the projection)",
            "resize": "CLIPImageProcessor resample=3 (PIL bicubic)",
        },
        arch=dict(model_type="clip_vision_model", **_VIT_B, patch_size=32, image_size=224),
        tiny=dict(format="transformers")),
    "uni2": Preset(
        name="uni2", family="dinov2_registers", hub_id="MahmoodLab/UNI2-h",
        published="timm ViT-h/14 with 8 register tokens, SwiGLUPacked MLP, LayerScale (hidden "
                  "1536, 24 layers, 24 heads, 224 px, no position for class/registers), converted "
                  "to Dinov2WithRegistersModel",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, feature="cls", resize="bilinear",
        sources={
            "architecture": "UNI2-h model card timm_kwargs: img_size 224, patch_size 14, depth "
                            "24, num_heads 24, init_values 1e-5, embed_dim 1536, mlp_ratio "
                            "2.66667*2, no_embed_class True, mlp_layer SwiGLUPacked, act_layer "
                            "SiLU, reg_tokens 8",
            "mean/std": "UNI2-h model card: transforms.Normalize(mean=(0.485, 0.456, 0.406), "
                        "std=(0.229, 0.224, 0.225))",
            "feature": "UNI2-h model card: timm.create_model(..., num_classes=0) -> the class "
                       "token after the final norm (timm global_pool='token')",
            "resize": "UNI2-h model card: transforms.Resize(224) (torchvision default bilinear) "
                      "with the ImageNet Normalize; its alternative, timm's create_transform from "
                      "the pretrained_cfg, may pick bicubic: set --config.fm.resize_method",
        },
        arch=dict(model_type="dinov2_with_registers", **{**_VIT_G, "num_hidden_layers": 24},
                  patch_size=14, num_register_tokens=8, **_TIMM),
        tiny=dict(format="timm", architecture="vit_giant_patch14_224", registers=8,
                  pos_prefix="none", swiglu=True),
        gated=True),
    "virchow2": Preset(
        name="virchow2", family="dinov2_registers", hub_id="paige-ai/Virchow2",
        published="timm ViT-H/14 with 4 register tokens, SwiGLUPacked MLP, LayerScale (hidden "
                  "1280, 32 layers, 16 heads, 224 px), converted to Dinov2WithRegistersModel",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, feature="cls_mean", resize="bicubic",
        sources={
            "architecture": "paige-ai/Virchow2 config.json: architecture vit_huge_patch14_224 "
                            "(hidden 1280, 32 blocks, 16 heads), model_args reg_tokens 4, "
                            "mlp_ratio 5.3375, init_values 1e-5, global_pool ''; the card adds "
                            "mlp_layer=SwiGLUPacked, act_layer=SiLU",
            "mean/std": "Virchow2 config.json pretrained_cfg mean/std (ImageNet), used by the "
                        "card's create_transform(**resolve_data_config(...))",
            "feature": "Virchow2 model card: output[:, 0] (class token) concatenated with "
                       "output[:, 5:].mean(1): the mean of the patch tokens, registers (tokens "
                       "1-4) excluded; 2 x 1280 = 2560-d",
            "resize": "Virchow2 config.json pretrained_cfg interpolation 'bicubic', crop_pct 1.0",
        },
        arch=dict(model_type="dinov2_with_registers", hidden_size=1280, num_hidden_layers=32,
                  num_attention_heads=16, mlp_ratio=4.003125, use_swiglu_ffn=True,
                  patch_size=14, num_register_tokens=4, **_TIMM),
        tiny=dict(format="timm", architecture="vit_huge_patch14_224", registers=4,
                  pos_prefix="class+registers", swiglu=True),
        gated=True),
    "hoptimus0": Preset(
        name="hoptimus0", family="dinov2_registers", hub_id="bioptimus/H-optimus-0",
        published="timm ViT-g/14 with 4 register tokens (vit_giant_patch14_reg4_dinov2: hidden "
                  "1536, 40 layers, 24 heads, SwiGLUPacked, LayerScale, 224 px, no position for "
                  "class/registers), converted to Dinov2WithRegistersModel",
        mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517),
        feature="cls", resize="bilinear",
        sources={
            "architecture": "H-optimus-0 model card: timm.create_model('hf-hub:bioptimus/"
                            "H-optimus-0', pretrained=True, init_values=1e-5, "
                            "dynamic_img_size=False); timm's vit_giant_patch14_reg4_dinov2",
            "mean/std": "H-optimus-0 model card: transforms.Normalize(mean=(0.707223, 0.578729, "
                        "0.703617), std=(0.211883, 0.230117, 0.177517))",
            "feature": "H-optimus-0 model card: features = model(x), the 1536-d class token "
                       "after the final norm",
            "resize": "our choice: the card feeds 224x224 tiles (ToTensor + Normalize) and "
                      "names no interpolation; bilinear as for UNI",
        },
        arch=dict(model_type="dinov2_with_registers", **_VIT_G, patch_size=14,
                  num_register_tokens=4, **_TIMM),
        tiny=dict(format="timm", architecture="vit_giant_patch14_reg4_dinov2", registers=4,
                  pos_prefix="none", swiglu=True),
        gated=True),
    "gigapath": Preset(
        name="gigapath", family="dinov2", hub_id="prov-gigapath/prov-gigapath",
        published="Prov-GigaPath tile encoder: timm vit_giant_patch14_dinov2 with patch 16 "
                  "(hidden 1536, 40 layers, 24 heads, SwiGLUPacked MLP, LayerScale, 224 px), "
                  "converted to Dinov2Model",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, feature="cls", resize="bicubic",
        sources={
            "architecture": "prov-gigapath/prov-gigapath config.json: architecture "
                            "vit_giant_patch14_dinov2, model_args img_size 224, patch_size 16, "
                            "embed_dim 1536, depth 40, num_heads 24, init_values 1e-5, mlp_ratio "
                            "5.33334, global_pool 'token'",
            "mean/std": "Prov-GigaPath README: transforms.Normalize(mean=(0.485, 0.456, 0.406), "
                        "std=(0.229, 0.224, 0.225))",
            "feature": "Prov-GigaPath README: tile_encoder(x), the class token after the final "
                       "norm (global_pool 'token'), 1536-d",
            "resize": "Prov-GigaPath README: transforms.Resize(256, BICUBIC) then CenterCrop(224); "
                      "a 40 px cell patch has no border to crop, so we resize straight to 224",
        },
        arch=dict(model_type="dinov2", **_VIT_G, patch_size=16, **_TIMM),
        tiny=dict(format="timm", architecture="vit_giant_patch14_dinov2", registers=0,
                  pos_prefix="class", swiglu=True),
        gated=True),
    "phikon2": Preset(
        name="phikon2", family="dinov2", hub_id="owkin/phikon-v2",
        published="ViT-L/16 (hidden 1024, 24 layers, 16 heads), transformers Dinov2Model",
        mean=IMAGENET_MEAN, std=IMAGENET_STD, feature="cls", resize="bilinear", input_size=224,
        sources={
            "mean/std": "owkin/phikon-v2 preprocessor (AutoImageProcessor, ImageNet "
                        "image_mean/image_std)",
            "feature": "phikon-v2 model card: outputs.last_hidden_state[:, 0, :] (1024-d)",
            "resize": "phikon-v2 preprocessing: resize to 224 then crop 224 (bilinear); "
                      "input_size 224 whatever image_size its config.json names (Dinov2 "
                      "interpolates its position table)",
        },
        arch=dict(model_type="dinov2", **_VIT_L, patch_size=16, image_size=224,
                  layer_norm_eps=1e-6, layerscale_value=1.0),
        tiny=dict(format="transformers")),
}

FEATURES = ("cls", "cls_mean")
RESIZE_METHODS = ("bilinear", "bicubic")


def names():
  return sorted(PRESETS)


def get(name: str) -> Preset:
  if name not in PRESETS:
    raise ValueError(f"unknown config.fm.preset {name!r}; valid presets: {', '.join(names())}")
  return PRESETS[name]


def names_of_family(family: str) -> list:
  return [n for n in names() if PRESETS[n].family == family]


def is_foundation(fm_cfg) -> bool:
  """True for a config.fm section (None when the config has none) that names a preset."""
  return fm_cfg is not None and bool(fm_cfg.get("preset"))
