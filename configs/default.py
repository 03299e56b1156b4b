"""The shared base config (cellvit_jax/config/defaults.py), runnable on its own: CustomViT."""
from cellvit_jax.config.defaults import get_config  # noqa: F401
