"""config.model.dtype -> the compute dtype a model is built with (parameters stay float32)."""
import jax.numpy as jnp

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"config.model.dtype={name!r} is not supported; choose one of "
                     f"{sorted(COMPUTE_DTYPES)}")
  return COMPUTE_DTYPES[name]
