"""Penultimate features of a finished run: the input of its classifier, for mode=probe.

Every model of the package ends in a Dense layer named "head", a child of the model itself
(models/*.py, models/fm/foundation.py), so the features are what that layer receives.  They
are read with a Flax method interceptor around the run's own eval forward
(finished_run.Run.uint8_forward: its normalisation, resize and EMA weights), so no model
needs a features-only code path.
"""
import flax.linen as nn


def features(run, state, images_uint8):
  """uint8 native patches -> float32 (B, D) inputs of the run's top-level `head`; traceable."""
  captured = []

  def record_head_input(next_fun, args, kwargs, context):
    module = context.module
    if (context.method_name == "__call__" and module.name == "head"
        and module.scope is not None and tuple(module.scope.path) == ("head",)):
      captured.append(args[0])
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record_head_input):
    run.uint8_forward(state, images_uint8)
  if len(captured) != 1:
    raise ValueError(f"the model of {run.workdir} ({run.config.model.name}) has "
                     f"{len(captured)} top-level layers named 'head' on its forward pass; "
                     "mode=probe needs exactly one (its classifier)")
  x = captured[0]
  return x.reshape(x.shape[0], -1).astype("float32")
