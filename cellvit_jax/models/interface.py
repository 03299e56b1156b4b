"""What the train step and the optimiser ask of a model, and nothing more.

Every model the package trains derives from `Model`: the task-specific models keep its
defaults, the foundation models (models/fm/foundation.py) override them. The step and the
optimiser call these methods instead of asking what kind of model they train:

  normalizes_input      False: the step normalises [0, 1] images with config.normalize before
                        the model; True: the model takes [0, 1] images at their native size
                        and resizes and normalises them itself (the FMs, with their preset's
                        constants).
  weight_decay_mask(p)  the parameters AdamW decays (a pytree of bools like `p`).
  layerwise_lr          True: the optimiser multiplies each update by its factor in
                        lr_scales(p) (a pytree of floats like `p`); False: one learning rate.
  counted_form()        the module whose XLA FLOPs are reported as the model's cost: itself,
                        unless it computes a layer in a backend-dependent form (CustomViT's
                        stem_impl), when the canonical form is counted, so that GFLOPs/image
                        is one figure on every backend.
"""
import flax.linen as nn
import jax


def decay_matrices(params):
  """AdamW decay on matrices and kernels only: not on biases, norms or scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


class Model(nn.Module):
  """A Linen module called as `apply(variables, images, train=bool)` -> logits."""

  # Plain class attributes, not dataclass fields: they describe the class, not an instance.
  normalizes_input = False
  layerwise_lr = False

  def weight_decay_mask(self, params):
    return decay_matrices(params)

  def lr_scales(self, params):
    return jax.tree.map(lambda p: 1.0, params)

  def counted_form(self):
    return self
