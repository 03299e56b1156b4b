"""mode=robustness: test metrics of a trained run under graded perturbations beyond blur.

  python -m cellvit_jax.main --config=configs/robustness.py --config.robustness.run=runs/customvit
  ... --config.robustness.perturbations="('jpeg', 'rotation')" \
      --config.robustness.severities.rotation="(10, 45)"

Perturbations (ops/perturb.py) and their severity grids (modes/robustness.py,
DEFAULT_SEVERITIES; our choice, see docs/blur.md): hed, brightness, contrast, jpeg,
rotation, noise.  Output: <workdir>/robustness.json, robustness.csv and robustness.png,
<workdir> defaulting to <run>/robustness/.
"""
import ml_collections

from cellvit_jax.modes import robustness


def get_config():
  config = ml_collections.ConfigDict()
  config.mode = "robustness"
  config.robustness = robustness.get_config_section()
  return config
