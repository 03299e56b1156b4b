"""Device mesh, batch sharding and multi-host start-up.

Data parallelism is `jax.jit` over a one-axis `Mesh` named 'data': batches are sharded on
their leading axis, parameters are replicated, and XLA inserts the gradient all-reduce.
The mesh uses Auto axis types: Explicit ones (jax.make_mesh's default) break the
transformers Flax ports.
"""
import os

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed():
  """Starts jax.distributed when launched as one of several processes.

  On Cloud TPU VM pods `jax.distributed.initialize()` finds its peers by itself
  (CELLVIT_DISTRIBUTED=1 asks for that); for local multi-process runs the usual
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables are used.
  """
  if "JAX_COORDINATOR_ADDRESS" in os.environ:
    jax.distributed.initialize(
        coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
        process_id=int(os.environ["JAX_PROCESS_ID"]))
  elif os.environ.get("CELLVIT_DISTRIBUTED") == "1":
    jax.distributed.initialize()


def make_mesh(devices=None) -> jax.sharding.Mesh:
  devices = np.asarray(devices if devices is not None else jax.devices())
  return jax.sharding.Mesh(devices, (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def check_batch_size(batch_size: int, mesh, what: str = "config.train.batch_size"):
  n = mesh.devices.size
  if batch_size < 1 or batch_size % n:
    lower = max(n, batch_size // n * n)
    raise ValueError(f"{what}={batch_size} must be a positive multiple of the {n} devices "
                     f"in use; try {lower} or {lower + n}")


def local_batch_size(global_batch: int) -> int:
  return global_batch // jax.process_count()


def shard_batch(batch: dict, mesh) -> dict:
  """Host-local numpy batch -> global jax.Arrays sharded on the 'data' axis."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def replicate(tree, mesh):
  return jax.device_put(tree, replicated(mesh))
