"""Pathology foundation models: the Flax wrapper that resizes, normalises and embeds
(foundation.py), the eight presets (presets.py), reading and checking weights
(weights.py), hub downloads into the local cache (hub.py), PyTorch checkpoint conversion
(convert.py), tiny random checkpoints for tests (tiny.py) and DINOv2 with register tokens
(dinov2_registers.py)."""
