"""Minimal reproduction: the vjp of a Dense layer on 3-D tokens vs on their 2-D view (XLA:CPU).

    python -m benchmarks.dense_layout [--shape=256,101,96,288] [--repeats=20]

One jnp product x @ w with x (B, N, D) and w (D, F), differentiated for both x and w: as an
einsum on the 3-D x (what flax's Dense does on a token array) and on x reshaped to
(B*N, D) (layers.token_dense). Same maths, same FLOPs. For each form it prints the time of
the jitted vjp (median of --repeats calls) and the ops of the optimised HLO that
materialise a transposed array (`copy` / `transpose` instructions and `copy_*` fusions);
then one line `dense vjp 3-D / 2-D time = R`. On XLA:CPU the 3-D form copies the (B*N, F)
output gradient into an (F, B*N) array before the weight-gradient dot; the 2-D form does not
(benchmarks/FINDINGS.md, "Dense layers on 2-D tokens"). Default shape: the first design's
qkv projection at batch 256 (101 tokens of width 96 to 288), the shape of the largest copies
in the Intel/AMX host's profile (benchmarks/FINDINGS.md).
"""
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("shape", ["256", "101", "96", "288"], "B, N, D, F.")
flags.DEFINE_integer("repeats", 20, "Timed calls per form.")

_COPY = re.compile(r"^\s*(%?(?:copy|transpose)[\w.]*) = (\S+)")


def vjp_fn(form: str, shape):
  b, n, d, f = shape
  if form == "3d":
    def dense(w, x):
      return jnp.einsum("bnd,df->bnf", x, w)
  else:
    def dense(w, x):
      return (x.reshape(b * n, d) @ w).reshape(b, n, f)
  return jax.jit(lambda w, x, ct: jax.vjp(dense, w, x)[1](ct))


def copies(compiled) -> list:
  """'name shape' of each op of the optimised HLO that copies or transposes an array."""
  return [f"{m.group(1)} {m.group(2)}" for line in compiled.as_text().splitlines()
          if (m := _COPY.match(line))]


def main(argv):
  del argv
  b, n, d, f = (int(s) for s in FLAGS.shape)
  rng = np.random.default_rng(0)
  w = jnp.asarray(rng.normal(size=(d, f)), jnp.float32)
  x = jnp.asarray(rng.normal(size=(b, n, d)), jnp.float32)
  ct = jnp.asarray(rng.normal(size=(b, n, f)), jnp.float32)
  times, grads = {}, {}
  for form in ("3d", "2d"):
    fn = vjp_fn(form, (b, n, d, f))
    compiled = fn.lower(w, x, ct).compile()
    grads[form] = jax.block_until_ready(fn(w, x, ct))
    t = []
    for _ in range(FLAGS.repeats):
      start = time.perf_counter()
      jax.block_until_ready(fn(w, x, ct))
      t.append(time.perf_counter() - start)
    times[form] = float(np.median(t))
    print(f"{form}: vjp median {times[form] * 1e3:.1f} ms; copies/transposes in HLO: "
          f"{copies(compiled) or 'none'}")
  for a, c in zip(jax.tree.leaves(grads["3d"]), jax.tree.leaves(grads["2d"])):
    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-3)  # same maths: equal to rounding
  print(f"dense vjp 3-D / 2-D time = {times['3d'] / times['2d']:.2f} "
        f"(x {b}x{n}x{d}, w {d}x{f}, {jax.devices()[0].platform})")


if __name__ == "__main__":
  app.run(main)
