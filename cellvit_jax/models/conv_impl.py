"""Forms of a k x k convolution ('same' k//2 zero padding, HWIO kernel, no groups) for XLA:CPU.

All three compute the same function with the same parameters, equal up to float rounding:
  conv    XLA's convolution, forward and gradients.
  matmul  one matmul over materialised 3x3 patches (`conv_as_matmul`), forward and gradients.
  mixed   XLA's convolution forward; for a stride-2 3x3 conv, gradients by hand
          (`conv_mixed`): the weight gradient tap by tap as window^T @ dY, the input
          gradient as four stride-1 convolutions of dY, one per output phase, interleaved.
          Stride 1 is XLA's throughout.
Why: XLA:CPU (its Eigen / YNNPACK kernels) runs small-channel forward convolutions well, at or above
PyTorch's speed, but their gradients poorly: the weight gradient of a stride-2 conv and the
lhs-dilated transposed conv that is its input gradient (benchmarks/FINDINGS.md, "The conv
stem on XLA:CPU"). `benchmarks/stem_convs.py` times each form per stem convolution.
"""
import functools

import jax
import jax.numpy as jnp
from jax import lax

CONV_IMPLS = ("conv", "matmul", "mixed", "auto")
_NHWC = ("NHWC", "HWIO", "NHWC")


def resolve_conv_impl(impl: str) -> str:
  """'auto' -> 'matmul' on CPU (the fastest whole train step measured there; 'mixed' is
  faster per convolution but not in the step, FINDINGS.md), XLA's convolution on GPU / TPU."""
  if impl not in CONV_IMPLS:
    raise ValueError(f"unknown conv implementation {impl!r}; choose one of {CONV_IMPLS}")
  if impl == "auto":
    return "matmul" if jax.default_backend() == "cpu" else "conv"
  return impl


def xla_conv(x, kernel, stride: int):
  p = kernel.shape[0] // 2
  return lax.conv_general_dilated(x, kernel, (stride, stride), ((p, p), (p, p)),
                                  dimension_numbers=_NHWC)


def _patches(x, k: int, stride: int):
  """(b, ho, wo, k*k*cin): the k x k neighbourhood of every output position, tap-major (HWIO)."""
  p = k // 2
  _, h, w, _ = x.shape
  ho, wo = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  taps = [xp[:, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride]
          for dy in range(k) for dx in range(k)]
  return jnp.concatenate(taps, axis=-1)


def conv_as_matmul(x, kernel, stride: int):
  """The convolution as one matmul over patches; XLA differentiates it into dots and pads."""
  k, _, cin, cout = kernel.shape
  patches = _patches(x, k, stride)
  b, ho, wo, _ = patches.shape
  out = jnp.dot(patches.reshape(-1, k * k * cin), kernel.reshape(k * k * cin, cout))
  return out.reshape(b, ho, wo, cout)


def _input_grad_stride2(g, kernel, h: int, w: int):
  """dX of a stride-2, pad-1 3x3 conv from dY (b, ho, wo, cout), by output phase.

  Input row 2i is seen only by tap 1 of output row i; row 2i+1 by tap 2 of output row i and
  tap 0 of output row i+1 (likewise for columns). So each of the four (row, column) parities
  of dX is a stride-1 correlation of dY with 1 or 2 taps per axis: forward convolutions,
  which XLA:CPU runs well, and no multiply by an inserted zero.
  """
  kt = jnp.swapaxes(kernel, 2, 3)  # (3, 3, cout, cin): correlate dY back to the input channels
  taps = {0: [1], 1: [2, 0]}       # parity -> kernel taps, for output offsets 0 and +1

  def phase(py, px):
    sub = kt[jnp.array(taps[py])][:, jnp.array(taps[px])]
    pad = ((0, len(taps[py]) - 1), (0, len(taps[px]) - 1))  # dY beyond the edge is zero
    return lax.conv_general_dilated(g, sub, (1, 1), pad, dimension_numbers=_NHWC)

  b, ho, wo, _ = g.shape
  rows = [jnp.stack([phase(py, 0), phase(py, 1)], axis=3) for py in (0, 1)]
  dx = jnp.stack(rows, axis=2).reshape(b, 2 * ho, 2 * wo, kernel.shape[2])
  return dx[:, :h, :w]  # an odd input size has one row / column fewer than 2 * ho


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_mixed(x, kernel, stride: int):
  """The convolution by XLA forward, with the gradients in the forms XLA:CPU runs fastest."""
  return xla_conv(x, kernel, stride)


def _conv_mixed_fwd(x, kernel, stride):
  return xla_conv(x, kernel, stride), (x, kernel)


def _conv_mixed_bwd(stride, residuals, g):
  x, kernel = residuals
  k, _, cin, cout = kernel.shape
  if not (stride == 2 and k == 3):
    # XLA's stride-1 gradients are themselves plain convolutions, which it runs well.
    return jax.vjp(lambda v, w: xla_conv(v, w, stride), x, kernel)[1](g)
  # dW one tap at a time: (strided input window)^T @ dY, contracting the row axis of both
  # (one dot, no transposed copy); 1.2x faster than one dot over concatenated patches.
  _, h, w, _ = x.shape
  _, ho, wo, _ = g.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  g2 = g.reshape(-1, cout)
  dw = jnp.stack([
      lax.dot_general(xp[:, dy:dy + 2 * ho - 1:2, dx:dx + 2 * wo - 1:2].reshape(-1, cin), g2,
                      (((0,), (0,)), ((), ())))
      for dy in range(3) for dx in range(3)]).reshape(kernel.shape).astype(kernel.dtype)
  dx = _input_grad_stride2(g, kernel, h, w)
  return dx.astype(x.dtype), dw


conv_mixed.defvjp(_conv_mixed_fwd, _conv_mixed_bwd)

FORMS = {"conv": xla_conv, "matmul": conv_as_matmul, "mixed": conv_mixed}
