"""The three pathology foundation models (FMs) we compare against, one preset each.

The paper's FMs are not public (only its abstract is); these three are OUR choice: real,
published pathology models that a user downloads and points us at with
config.fm.weights=/path (nothing is downloaded at run time).  Each number below names
where it comes from.  Pure Python: importing this file imports no model code.

  family    which transformers Flax port runs it: 'vit' (FlaxViTModule), 'dinov2'
            (FlaxDinov2Module: a ViT with LayerScale; timm checkpoints are converted to
            it by models/convert.py) or 'clip' (FlaxCLIPVisionModule).
  mean/std  the normalisation the model was trained with, applied inside the model after
            the 40 -> 224 resize.
  feature   what the probe and the fine-tuning head read: 'cls' (the class token after
            the final norm) or 'cls_mean' (class token + mean patch token, concatenated).
  resize    the interpolation of the model's own published preprocessing.
"""
import dataclasses

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# OpenAI CLIP's constants (openai/CLIP clip.py `_transform`, and CLIPImageProcessor's defaults).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class Preset:
  name: str
  family: str           # 'vit' | 'dinov2' | 'clip'
  hub_id: str           # where the published weights live
  published: str        # the published architecture, for messages and docs
  mean: tuple
  std: tuple
  feature: str
  resize: str           # 'bilinear' | 'bicubic'
  sources: dict         # field -> where its value comes from


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
        }),
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
        }),
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
        }),
}

FEATURES = ("cls", "cls_mean")
RESIZE_METHODS = ("bilinear", "bicubic")


def names():
  return sorted(PRESETS)


def get(name: str) -> Preset:
  if name not in PRESETS:
    raise ValueError(f"unknown config.fm.preset {name!r}; valid presets: {', '.join(names())}")
  return PRESETS[name]


def is_foundation(config) -> bool:
  """True for a config that runs one of the FMs (config.fm.preset set)."""
  fm = config.get("fm")
  return fm is not None and bool(fm.get("preset"))
