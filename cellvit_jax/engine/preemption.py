"""SIGTERM -> stop at the next step boundary, save, exit 0 (preemptible VMs, batch queues).

Single process: a signal handler sets a flag the loop polls. Several processes: every
process must stop at the same step, so the decision goes through JAX's preemption sync
point (the distributed runtime's agreement on a step), which sees SIGTERM on any host.

Watches nest: a watch that caught SIGTERM passes it on, when it exits, to the handler it
replaced, so a study around a cell's training hears it too and starts no further cell.
"""
import signal
import threading

import jax


class PreemptionWatch:

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      if self.requested and callable(self._previous):
        self._previous(signal.SIGTERM, None)
    return False

  def should_stop(self, step: int) -> bool:
    """`step`: a count rising by one per call on every process (the train loop's call count)."""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      return bool(multihost_utils.reached_preemption_sync_point(step))
    return self.requested
