"""The shared base config (cellvit_jax/default_config.py), runnable on its own: CustomViT."""
from cellvit_jax.default_config import get_config  # noqa: F401
