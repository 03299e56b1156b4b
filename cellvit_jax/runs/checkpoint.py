"""orbax CheckpointManager over (train state, data-iterator state, config).

Saving the grain iterator state next to the model state means a resumed run sees exactly
the batches it would have seen. orbax writes each step into a temporary folder and
renames it when complete, so a checkpoint interrupted mid-write never becomes the latest.
"""
import os
from typing import Optional

import numpy as np
import orbax.checkpoint as ocp
import grain

from cellvit_jax.runs import write_failures


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (disk full, quota, permissions, a second writer)."""


def _write_error(directory, step, e):
  detail = " ".join(str(e).split())[:300]
  return CheckpointWriteError(
      f"could not write the checkpoint{f' of step {step}' if step is not None else ''} to "
      f"{directory} ({detail}); {write_failures.write_failure_hint(e, directory)}. Earlier "
      "complete checkpoints are kept and a rerun resumes from the latest of them.")


class BaseWeightsMismatch(ValueError):
  """A checkpoint's adapters were trained on other frozen base weights than the target's."""


def _without_frozen(state):
  # A frozen base (LoRA, models/fm/lora.py) comes from the FM's weights, not the checkpoint.
  return state.replace(frozen={}) if hasattr(state, "frozen") else state


class Checkpointer:

  def __init__(self, workdir: str, keep: int = 2):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=("state", "data", "config"))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, state, data_iterator, config_dict: dict, force: bool = False):
    args = {"state": ocp.args.StandardSave(_without_frozen(state)),
            "config": ocp.args.JsonSave(config_dict)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    try:
      return self._manager.save(step, args=ocp.args.Composite(**args), force=force)
    except Exception as e:  # also surfaces the failure of an earlier asynchronous save
      raise _write_error(self.directory, step, e) from e

  def restore(self, abstract_state, data_iterator, step: Optional[int] = None):
    """Restores the state (shaped and sharded like `abstract_state`) and, in place, the
    iterator; returns the state."""
    step = self.latest_step() if step is None else step
    args = {"state": ocp.args.StandardRestore(_without_frozen(abstract_state))}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))["state"]
    if not hasattr(abstract_state, "frozen"):
      return restored
    expected = np.asarray(abstract_state.base_fingerprint)
    if not np.array_equal(np.asarray(restored.base_fingerprint), expected):
      raise BaseWeightsMismatch(
          f"the checkpoint of step {step} in {self.directory} holds LoRA adapters trained on "
          "other base weights than config.fm.weights holds now (their sha256 differs); point "
          "config.fm.weights at the weights the run was trained with, or start a new --workdir")
    return restored.replace(frozen=abstract_state.frozen)

  def wait(self):
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise _write_error(self.directory, None, e) from e

  def close(self):
    self.wait()
    self._manager.close()
