"""Ablation: CustomViT trained with random Gaussian blur augmentation.

Each training sample is blurred with probability 0.5, sigma ~ U(0, 1.5) px at 40x40
(inside the jitted train step, after flips/rotations, before normalisation). Compare its
blur-robustness curve (mode=blur, configs/blur.py) with a run of configs/customvit.py:

  python -m cellvit_jax.main --config=configs/customvit_blur_aug.py \
      --workdir=runs/customvit_blur_aug
  python -m cellvit_jax.main --config=configs/blur.py --config.blur.run=runs/customvit_blur_aug
"""
import os

from cellvit_jax.config import files as config_files


def get_config():
  config = config_files.load("customvit.py", base_dir=os.path.dirname(os.path.abspath(__file__)))
  config.augment.blur.prob = 0.5
  config.augment.blur.sigma_min = 0.0
  config.augment.blur.sigma_max = 1.5
  return config
