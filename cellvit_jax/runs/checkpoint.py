"""orbax CheckpointManager over (train state, data-iterator state, config).

Saving the grain iterator state next to the model state means a resumed run sees exactly
the batches it would have seen. orbax writes each step into a temporary folder and
renames it when complete, so a checkpoint interrupted mid-write never becomes the latest.
"""
import os
from typing import Optional

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
    args = {"state": ocp.args.StandardSave(state), "config": ocp.args.JsonSave(config_dict)}
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
    args = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**args))
    return restored["state"]

  def wait(self):
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise _write_error(self.directory, None, e) from e

  def close(self):
    self.wait()
    self._manager.close()
