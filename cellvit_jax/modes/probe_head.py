"""The linear probe's head file (workdir/probe_head.npz): written by mode=probe (probe.py),
read back by finished_run.load_run, which needs it without the probe's training code.

The head has the feature standardisation folded in, so backbone -> head is the whole model.
"""
import os

import numpy as np
import optax

from cellvit_jax.engine import state as state_lib
from cellvit_jax.models.fm import foundation
from cellvit_jax.modes import feature_cache

HEAD_FILE = "probe_head.npz"


def save(workdir: str, kernel, bias, l2: float):
  """Writes the head atomically (the last file a finished probe writes before results.json)."""
  feature_cache.atomic_savez(os.path.join(workdir, HEAD_FILE),
                             kernel=np.asarray(kernel, np.float32),
                             bias=np.asarray(bias, np.float32), l2=np.float64(l2))


def head_state(fm_cfg, model, workdir: str, mesh):
  """A TrainState of a finished probe: the published backbone (config.fm) and the stored head."""
  path = os.path.join(workdir, HEAD_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir} holds no finished probe (no {HEAD_FILE}); run it first: "
                            f"python -m cellvit_jax.main --config=configs/fm.py:"
                            f"{fm_cfg.preset},probe --workdir={workdir}")
  with np.load(path) as f:
    kernel, bias = f["kernel"], f["bias"]
  backbone = foundation.pretrained_backbone(fm_cfg, model)
  feature_dim = model.hf_config.hidden_size * (2 if model.feature == "cls_mean" else 1)
  if kernel.shape != (feature_dim, model.num_classes):
    raise ValueError(f"{path} holds a head of shape {kernel.shape} but the model's features and "
                     f"classes need {(feature_dim, model.num_classes)}; the weights or dataset "
                     "changed since the probe ran: rerun it in a new --workdir")
  params = {"backbone": backbone, "head": {"kernel": kernel, "bias": bias}}
  return state_lib.build_state(model, optax.identity(), 0, mesh, params=params)
