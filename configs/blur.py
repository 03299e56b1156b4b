"""mode=blur: blur robustness of a trained run over a sigma grid (modes/blur_study.py).

  python -m cellvit_jax.main --config=configs/blur.py --config.blur.run=runs/customvit
  ... --config.blur.sigmas="(0, 0.25, 0.5, 1, 2)"  --workdir=runs/customvit/blur_fine

The sigma grid is our choice (the paper's is not public); see docs/blur.md.  Output:
<workdir>/blur.json and blur.png, <workdir> defaulting to <run>/blur/.
"""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.mode = "blur"
  config.blur = ml_collections.ConfigDict(dict(
      run="",                                   # workdir of a finished training run (required)
      sigmas=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0),    # Gaussian sigma in pixels of the 40x40 patch
      split="",                                 # "" -> test; a screening run's val
      batch_size=0,                             # 0 -> the run's config.train.eval_batch_size
      truncate=3.0,                             # kernel radius int(truncate * sigma + 0.5)
      boundary="reflect",                       # scipy.ndimage mode name (edge pixel repeated)
      data_dir="",                              # "" -> the run's config.dataset.data_dir
  ))
  return config
