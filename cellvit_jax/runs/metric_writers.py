"""Metrics as JSON lines (metrics.jsonl) and TensorBoard event files (tensorboardX, no TF)."""
import json
import math
import os

import jax
import numpy as np

from cellvit_jax import atomic_files


def _plain(v):
  if isinstance(v, (np.generic, jax.Array)):
    v = np.asarray(v).item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return v


def _drop_after(path: str, step: int):
  """A resumed run replays the steps after its checkpoint: drop their old records first
  (atomically), so metrics.jsonl reads as one uninterrupted run."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        keep.append(line)
    except (ValueError, KeyError):  # a line cut by a kill mid-write
      continue
  if len(keep) != len(lines):
    atomic_files.write_text(path, "".join(keep))


class MetricWriter:
  """Only process 0 writes; other processes of a multi-host run get a no-op writer."""

  def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
    self.enabled = enabled
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      _drop_after(path, resume_step)
      self._jsonl = open(path, "a")
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, scalars: dict):
    if not self.enabled:
      return
    record = {"step": int(step), "split": split}
    record.update({k: _plain(v) for k, v in scalars.items()})
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for k, v in scalars.items():
      v = _plain(v)
      if isinstance(v, (int, float)) and not isinstance(v, bool):
        self._tb.add_scalar(f"{split}/{k}", v, int(step))
    self._tb.flush()

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
