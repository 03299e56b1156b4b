"""The pathology foundation models: linear probe or fine-tuning, one file for all presets.

  python -m cellvit_jax.main --config=configs/fm.py:phikon,probe --config.fm.weights=owkin/phikon
  python -m cellvit_jax.main --config=configs/fm.py:virchow2,finetune \
      --config.fm.weights=paige-ai/Virchow2
  python -m cellvit_jax.main --config=configs/fm.py:uni,probe --config.fm.weights=~/fm/uni

The argument is `<preset>,<mode>`: preset phikon | uni | plip | phikon2 | gigapath | uni2 |
virchow2 | hoptimus0 (models/fm/presets.py); config.fm.weights is a hub id
(owner/name[@revision], fetched into the Hugging Face cache; gated ones need HF_TOKEN)
or a local directory; mode
probe (frozen features, cached once, multinomial logistic regression with L2 chosen on
val) | finetune (the whole model, AdamW with layer-wise lr decay).  These FMs are our
choice: the paper's are not public (docs/foundation_models.md).  No weights?  Write a
tiny random checkpoint: python -m cellvit_jax.models.fm.tiny --tiny=phikon --output=DIR.
Default workdir: runs/<preset>_<mode>/.
"""
from cellvit_jax.config import defaults as default
from cellvit_jax.models.fm import presets as fm_presets

MODES = ("probe", "finetune")


def get_config(arg: str = "phikon,probe"):
  preset, _, mode = arg.partition(",")
  fm_presets.get(preset)  # a clear error naming the valid presets
  mode = mode or "probe"
  if mode not in MODES:
    raise ValueError(f"configs/fm.py:{arg}: mode {mode!r} is not one of {', '.join(MODES)}")
  config = default.get_config()
  config.mode = mode
  config.model.name = preset          # results and the default workdir carry the preset's name
  config.fm.preset = preset
  # A probe chooses its L2 / k on val itself, and the fine-tuning recipe is fixed: these runs
  # are comparison rows and read test once. Screening an FM setting: --config.evaluate_test=false.
  config.evaluate_test = True
  if mode == "finetune":
    # Our fine-tuning recipe (the paper's is not public): a small peak lr with warm-up and
    # layer-wise decay, the usual BEiT/MAE-style ViT recipe; the data scale sets the rest.
    config.optim.lr = 1e-4
    config.optim.weight_decay = 0.05
    config.optim.warmup_epochs = 1.0
    config.optim.label_smoothing = 0.1
    config.fm.layer_decay = 0.75
    config.train.batch_size = 64      # 224x224 inputs: 31x the pixels of a 40x40 patch
    config.train.eval_batch_size = 128
    config.train.epochs = 5.0
    config.train.eval_every_epochs = 1.0
    # config.model.dtype = "bfloat16" computes in bf16 with float32 params (GPU/TPU).
  return config
