"""Speed of ops.blur.gaussian_blur inside a jitted step, as a ratio against the same step without blur.

Baseline: uint8 -> float32 / 255 (what the step does before the model anyway).  Each
variant adds a per-sample-sigma blur (sigma ~ U(0, max_sigma), traced, static max_sigma)
or one scalar blur for the whole batch, with method 'conv' or 'matmul'.  Median of
`--repeats` timed calls after one warm-up (compile) call.  Machines are shared and noisy:
compare ratios taken in one run.

  PYTHONPATH=. python benchmarks/blur.py [--repeats 10] [--skip-conv]
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from cellvit_jax.ops import blur

CASES = (  # (batch shape, max sigma): 40 px patches, and 224 px after the resize (x 224/40)
    ((256, 40, 40, 3), 3.0),
    ((32, 224, 224, 3), 3.0 * 224 / 40),
)


def median_ms(fn, args, repeats):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1e3 * float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--skip-conv", action="store_true", help="conv is slow on XLA:CPU")
  args = parser.parse_args()
  print(f"backend {jax.default_backend()}, {jax.devices()[0].device_kind}")
  for shape, max_sigma in CASES:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 256, shape, dtype=np.uint8))
    sigma = jnp.asarray(rng.uniform(0, max_sigma, shape[0]), jnp.float32)
    to_float = lambda x: x.astype(jnp.float32) / 255.0
    base = median_ms(jax.jit(to_float), (x,), args.repeats)
    print(f"{shape} max_sigma {max_sigma:.1f} (radius {blur.static_radius(max_sigma)}): "
          f"no blur {base:.2f} ms")
    for method in ("matmul",) if args.skip_conv else ("matmul", "conv"):
      per_sample = jax.jit(lambda x, s, m=method: blur.gaussian_blur(
          to_float(x), s, max_sigma=max_sigma, method=m))
      scalar = jax.jit(lambda x, m=method: blur.gaussian_blur(to_float(x), max_sigma, method=m))
      for name, fn, fargs in (("per-sample sigma", per_sample, (x, sigma)),
                              ("scalar sigma", scalar, (x,))):
        ms = median_ms(fn, fargs, args.repeats)
        print(f"  {method:6s} {name:16s} {ms:9.2f} ms  = {ms / base:7.1f} x no blur, "
              f"{shape[0] / ms * 1e3:9.0f} img/s")


if __name__ == "__main__":
  main()
