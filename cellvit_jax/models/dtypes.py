"""config.model.dtype -> the compute dtype a model is built with (parameters stay float32)."""
import jax
import jax.numpy as jnp

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def resolve_dtype(name: str, backend: str = "") -> str:
  """config.model.dtype -> "float32" | "bfloat16". "auto" (the default) computes in bf16 on
  GPU/TPU and in float32 on CPU, where XLA:CPU bf16 measured slower (benchmarks/FINDINGS.md);
  parameters and optimiser state stay float32 either way."""
  if name == "auto":
    return "float32" if (backend or jax.default_backend()) == "cpu" else "bfloat16"
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"config.model.dtype={name!r} is not supported; choose one of "
                     f"{sorted(['auto', *COMPUTE_DTYPES])}")
  return name


def compute_dtype(name: str):
  return COMPUTE_DTYPES[resolve_dtype(name)]
