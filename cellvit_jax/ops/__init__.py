"""Image operations in jnp, run inside the jitted step so XLA fuses them: flips and 90-degree
rotations, normalisation, Gaussian blur, stain (HED) and colour jitter, mixup / CutMix and
the resize to a foundation model's input. The host only moves uint8."""
