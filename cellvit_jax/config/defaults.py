"""Shared base config. configs/*.py import it (`from cellvit_jax.config import defaults as default`)
and override a few fields.

Hyper-parameters here are our choices (the paper's are not public), picked so that the
default run finishes in minutes on a 2-core CPU; raise `train.epochs` and the FlagLimit
for real studies on GPU/TPU.
"""
import ml_collections
from ml_collections import config_dict


def get_config():
  config = ml_collections.ConfigDict()
  config.mode = "train"
  config.seed = 0
  # JAX's persistent compilation cache (compile_cache.py): "auto" = ~/.cache/cellvit_jax/
  # jax_cache (or $XDG_CACHE_HOME), a folder, or "off".
  config.compile_cache_dir = "auto"
  # Whether the run loads and scores its test split (config.dataset.test_split). Off: the
  # split is never read (a screening run: choices are made on val), results.json holds no
  # test metrics and records test_read=false. On for final runs, which read test once: the
  # README's first command (configs/customvit.py), the foundation-model configs, a study's
  # grid (configs/study.py; its screening mode turns it off). docs/running.md, "Sealed test".
  config.evaluate_test = False

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "synthetic_cells"
  config.dataset.data_dir = ""          # "" -> $CELLVIT_DATA, else ~/tensorflow_datasets
  config.dataset.flaglimit = 1024       # at most this many training samples per class
  config.dataset.cache = False          # hold the selected uint8 training subset in memory
  # Hold the FlagLimit training subset on the device(s) (replicated) and stream only indices
  # (data/on_device.py): "auto" does when its uint8 images fit on_device_max_mb per device
  # (FlagLimit 16,384 x 4 classes of 40x40x3 is 315 MB); "true" / "false" force either.
  config.dataset.on_device = "auto"
  config.dataset.on_device_max_mb = 1024
  config.dataset.train_split = "train"
  config.dataset.eval_split = "val"
  config.dataset.test_split = "test"
  config.dataset.allow_shared_specimens = False
  config.dataset.workers = 0            # grain worker processes (0: in the main process)
  # Recipe of the embedded synthetic_cells family (used only for names synthetic_cells*):
  # 100 specimens x 800 cells, 8 val and 8 test specimens -> 16,800 train patches per class.
  config.dataset.synthetic = ml_collections.ConfigDict(dict(
      num_specimens=100, cells_per_specimen=800, seed=0, val_specimens=8, test_specimens=8,
      nonspecific_fraction=0.5))

  config.model = ml_collections.ConfigDict()
  config.model.name = "customvit"
  config.model.kwargs = ml_collections.ConfigDict()
  # Compute dtype: "auto" = bfloat16 on GPU/TPU, float32 on CPU (models/dtypes.py);
  # "float32" | "bfloat16" force one. Parameters and optimiser state stay float32.
  config.model.dtype = "auto"

  # Images arrive as uint8; the jitted step scales to [0, 1] and normalises with these.
  config.normalize = ml_collections.ConfigDict()
  config.normalize.mean = (0.5, 0.5, 0.5)
  config.normalize.std = (0.5, 0.5, 0.5)

  config.augment = ml_collections.ConfigDict()
  config.augment.flip = True            # random horizontal and vertical flips
  config.augment.rot90 = True           # random multiples of 90 degrees (cells have no up)
  # Gaussian blur (ops.augment.random_blur), after flips/rotations and before normalisation,
  # inside the jitted train step: each sample is blurred with probability `prob`, sigma ~
  # U(sigma_min, sigma_max) in pixels of the patch. Off by default; configs/customvit_blur_aug.py
  # turns it on. sigma_max also fixes the kernel radius ceil(3 * sigma_max).
  config.augment.blur = ml_collections.ConfigDict(dict(prob=0.0, sigma_min=0.0, sigma_max=1.5))
  # Recipe switches, all off by default (ops/color.py, ops/mixing.py; docs/customvit.md,
  # "Recipe switches: stain / colour jitter, mixup, CutMix").
  # Stain jitter (Tellez et al. 2018) after flips/rotations: with probability `prob` per sample,
  # RGB -> haematoxylin/eosin/DAB (Ruifrok & Johnston 2001), each stain * U(1 - scale,
  # 1 + scale) + U(-shift, shift) (skimage.color.rgb2hed units), back to RGB.
  config.augment.hed = ml_collections.ConfigDict(dict(prob=0.0, scale=0.05, shift=0.01))
  # Colour jitter after the stain jitter: with probability `prob` per sample, brightness,
  # contrast and saturation factors ~ U(1 - s, 1 + s) (0: that one off). No hue: in H-DAB
  # the hue is the label's signal.
  config.augment.color = ml_collections.ConfigDict(dict(prob=0.0, brightness=0.1,
                                                        contrast=0.1, saturation=0.1))
  # Mixup (Zhang et al. 2018) / CutMix (Yun et al. 2019) of the augmented batch and its
  # label-smoothed targets, lam ~ Beta(alpha, alpha); 0 is off; both > 0: one of the two per
  # batch, each with probability 0.5.
  config.augment.mixup_alpha = 0.0
  config.augment.cutmix_alpha = 0.0

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 1e-3                # peak learning rate, for batch_size below
  config.optim.weight_decay = 0.05
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.warmup_epochs = 1.0
  config.optim.min_lr_ratio = 0.01      # cosine decays to lr * this
  config.optim.grad_clip = 1.0          # global-norm clip; 0 disables
  config.optim.label_smoothing = 0.1
  # Exponential moving average of the weights (and BatchNorm statistics), used for every
  # evaluation and saved in the checkpoints: decay per step, capped by (1 + t) / (10 + t)
  # early on (steps.ema_decay_at); 0 is off. A recipe switch, off by default.
  config.optim.ema_decay = 0.0

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 128         # global batch, split over all devices
  config.train.eval_batch_size = 256
  # Training length: exactly one of epochs / steps / examples is used, in that order of
  # precedence among the ones that are > 0 (see train_length.py).
  config.train.epochs = 15.0
  config.train.steps = 0
  config.train.examples = 0
  config.train.log_every_steps = 20
  # Train steps per dispatch (engine/multistep.py: 1 = the plain step; k > 1 one lax.scan program
  # on GPU/TPU, the plain step k times on CPU): logs, evaluation, checkpoints and SIGTERM act
  # on dispatch boundaries. >1 pays where the host loop, not the device, is the limit; on
  # GPU/TPU it changes results by rounding.
  # "auto": 1 on CPU, 16 on GPU/TPU; or an integer (typed object so that both parse).
  config.train.steps_per_dispatch = config_dict.FieldReference("auto", field_type=object)
  config.train.eval_every_epochs = 5.0  # validation costs a pass over the val split
  config.train.checkpoint_every_epochs = 1.0
  config.train.keep_checkpoints = 2
  config.train.progress_bar = True      # tqdm, only when stderr is a terminal
  # Stop this invocation after this many steps (0: run to the end); rerun the same command
  # to continue. For time-boxed or preemptible jobs; it does not change the schedule.
  config.train.max_steps_per_run = 0

  # Foundation models (models/fm/presets.py, docs/foundation_models.md); used when
  # fm.preset is set (configs/fm.py), ignored otherwise.
  config.fm = ml_collections.ConfigDict()
  config.fm.preset = ""                 # a models/fm/presets.py name; "" -> not an FM run
  config.fm.weights = ""                # hub id owner/name[@rev] (HF cache) or a local directory
  config.fm.num_heads = 0               # timm only: 0 -> config.json, else hidden / 64
  config.fm.input_size = 0              # 0 -> the preset's, else the checkpoint's (224)
  config.fm.resize_method = ""          # "" -> the preset's ('bilinear' | 'bicubic')
  config.fm.feature = ""                # "" -> the preset's ('cls' | 'cls_mean')
  config.fm.layer_decay = 0.75          # finetune: lr of block i scaled by decay ** (L - i)
  config.fm.probe_l2_grid = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
  config.fm.probe_max_steps = 300       # L-BFGS iterations per L2 strength
  config.fm.feature_batch_size = 64     # probe: images per backbone call
  # Probe features; "" -> $CELLVIT_CACHE or ~/.cache/cellvit_jax.
  config.fm.cache_dir = ""

  # mode=probe (modes/probe.py, docs/foundation_models.md): how frozen features are classified
  # and on how many labels. The L2 grid and L-BFGS steps of 'logistic' are config.fm.probe_*.
  config.probe = ml_collections.ConfigDict()
  config.probe.method = "logistic"      # logistic | knn (cosine, k chosen on val) | simpleshot
  config.probe.knn_k_grid = (1, 5, 10, 20, 50)
  config.probe.shots = 0                # 0: the whole FlagLimit subset; N: N per class per episode
  config.probe.episodes = 10            # N-shot episodes (mean and 95% t-interval over them)
  config.probe.run = ""                 # "": the FM of config.fm; a finished run's workdir: its
                                        # penultimate features (the input of its head)

  # mode=finetune: full (every weight, layer-wise lr decay) or LoRA adapters on a frozen base
  # (models/fm/lora.py; docs/foundation_models.md "LoRA").
  config.finetune = ml_collections.ConfigDict()
  config.finetune.method = "full"       # 'full' | 'lora'
  config.finetune.lora_rank = 8         # r of W + (alpha / r) A B
  config.finetune.lora_alpha = 16.0
  config.finetune.lora_targets = "all"  # 'all' block kernels, or module paths in a block:
                                        # e.g. 'query,value' or 'attention/output/dense,mlp/fc1'

  return config
