"""CustomViT's stem convolutions one at a time: forward, input and weight gradient, per form.

    python -m benchmarks.stem_convs [--batch=256] [--repeats=5] [--no-torch]

A minimal reproduction of where XLA:CPU loses on the conv stem (benchmarks/FINDINGS.md):
each 3x3 convolution of the default stem (patch 8: 40x40 3->24 stride 1, then 24->48,
48->96, 96->96 at stride 2) alone, in each form of models/conv_impl.py, jitted, float32,
against PyTorch's conv2d (eager, one thread) on the same arrays. Times are process CPU time
in ms, the median of --repeats calls after a warm-up (CPU time, because this machine is
shared). Per conv it prints forward, dX and dW for every JAX form and PyTorch's forward and
forward+backward; then one line per form:
  stem convs fwd+dX+dW <form>/PyTorch time = R   (summed over the four convs; < 1: faster)
The first conv's dX is left out everywhere: the stem's input is the image.
"""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from cellvit_jax.models import conv_impl

FLAGS = flags.FLAGS
SHAPES = [(40, 3, 24, 1), (40, 24, 48, 2), (20, 48, 96, 2), (10, 96, 96, 2)]


def define_flags():
  flags.DEFINE_integer("batch", 256, "Batch size (the profiled train step's).")
  flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (median reported).")
  flags.DEFINE_bool("torch", True, "Time PyTorch's conv2d as the baseline.")


def _cpu_ms(fn):
  fn()
  times = []
  for _ in range(FLAGS.repeats):
    t = time.process_time()
    fn()
    times.append(time.process_time() - t)
  return float(np.median(times)) * 1e3


def _jax_times(form, x, k, g, stride, need_dx):
  f = conv_impl.FORMS[form]
  fwd = jax.jit(lambda x, k: f(x, k, stride))
  dx = jax.jit(lambda x, k: jax.vjp(lambda v: f(v, k, stride), x)[1](g)[0])
  dw = jax.jit(lambda x, k: jax.vjp(lambda w: f(x, w, stride), k)[1](g)[0])
  run = lambda fn: _cpu_ms(lambda: jax.block_until_ready(fn(x, k)))
  return {"fwd": run(fwd), "dX": run(dx) if need_dx else 0.0, "dW": run(dw)}


def _torch_times(x, k, g, stride, need_dx):
  import torch
  torch.set_num_threads(1)
  xt = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2).copy(), requires_grad=need_dx)
  kt = torch.tensor(np.asarray(k).transpose(3, 2, 0, 1).copy(), requires_grad=True)
  gt = torch.tensor(np.asarray(g).transpose(0, 3, 1, 2).copy())
  conv = torch.nn.functional.conv2d

  def fwd():
    with torch.no_grad():
      conv(xt, kt, stride=stride, padding=1)

  def both():
    y = conv(xt, kt, stride=stride, padding=1)
    torch.autograd.grad(y, [xt, kt] if need_dx else [kt], gt)

  return {"fwd": _cpu_ms(fwd), "fwd+bwd": _cpu_ms(both)}


def main(argv):
  del argv
  print(f"load (uptime): {os.popen('uptime').read().strip()}")
  print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, batch {FLAGS.batch}")
  rng = np.random.default_rng(0)
  forms = ("conv", "matmul", "mixed")
  totals = {f: 0.0 for f in forms + ("torch",)}
  for hw, cin, cout, stride in SHAPES:
    ho = (hw - 1) // stride + 1
    x = jnp.asarray(rng.standard_normal((FLAGS.batch, hw, hw, cin), np.float32))
    k = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) * 0.1)
    g = jnp.asarray(rng.standard_normal((FLAGS.batch, ho, ho, cout), np.float32))
    need_dx = cin != 3
    parts = []
    for form in forms:
      t = _jax_times(form, x, k, g, stride, need_dx)
      totals[form] += sum(t.values())
      parts.append(f"{form} fwd {t['fwd']:.0f} dX {t['dX']:.0f} dW {t['dW']:.0f}")
    if FLAGS.torch:
      t = _torch_times(x, k, g, stride, need_dx)
      totals["torch"] += t["fwd+bwd"]
      parts.append(f"torch fwd {t['fwd']:.0f} fwd+bwd {t['fwd+bwd']:.0f}")
    print(f"{hw}x{hw} {cin}->{cout} stride {stride} (ms): " + " | ".join(parts), flush=True)
  for form in forms:
    if FLAGS.torch:
      print(f"stem convs fwd+dX+dW {form}/PyTorch time = {totals[form] / totals['torch']:.2f}  "
            f"({totals[form]:.0f} vs {totals['torch']:.0f} ms)")
    else:
      print(f"stem convs fwd+dX+dW {form}/conv time = {totals[form] / totals['conv']:.2f}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
