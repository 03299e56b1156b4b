"""GFLOP/s of the matmul shapes inside a CustomViT train step, jnp vs torch, fp32 and bf16.

    python -m benchmarks.matmul_shapes [--repeats=5]

CustomViT (width 96, MLP 192, 3 heads of 32, 101 tokens) at batch 256 multiplies
(25856 x K) by (K x N) activations x weights in the forward pass, the same with a transposed
weight for the input gradient, and (K x 25856) by (25856 x N) for the weight gradient (a
transposed activation); attention is a batched (768 x 101 x 32) x (768 x 32 x 101). Each
shape is timed as a jitted jnp.matmul / einsum and as torch.matmul on the same data, the
two interleaved per repeat; the 2048 square matmul is the reference. Prints GFLOP/s and
the JAX/torch ratio per shape.
"""
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 5, "Timed calls per shape and library (interleaved).")

T = 256 * 101  # tokens in a batch of 256
SHAPES = {  # name: (lhs shape, rhs shape, einsum)
    "square 2048": ((2048, 2048), (2048, 2048), "mk,kn->mn"),
    "fwd qkv 96->288": ((T, 96), (96, 288), "mk,kn->mn"),
    "fwd fc2 192->96": ((T, 192), (192, 96), "mk,kn->mn"),
    "dgrad qkv (288->96, W^T)": ((T, 288), (96, 288), "mn,kn->mk"),
    "wgrad qkv (X^T dY)": ((T, 96), (T, 288), "mk,mn->kn"),
    "attn QK^T (768x101x32)": ((768, 101, 32), (768, 101, 32), "bqd,bkd->bqk"),
    "attn PV (768x101x101)": ((768, 101, 101), (768, 101, 32), "bqk,bkd->bqd"),
}


def flops(a, b, eq):
  dims = {}
  for shape, spec in zip((a, b), eq.split("->")[0].split(",")):
    dims.update(zip(spec, shape))
  return 2 * np.prod(list(dims.values()))


def timed(fn, repeats=3):
  fn()
  t = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    t.append(time.perf_counter() - start)
  return float(np.median(t))


def main(argv):
  del argv
  import torch  # the comparison library, needed only here
  args = FLAGS
  print(f"load (uptime): {os.popen('uptime').read().strip()}")
  rng = np.random.default_rng(0)
  for dname, jd, td in (("float32", jnp.float32, torch.float32),
                        ("bfloat16", jnp.bfloat16, torch.bfloat16)):
    for name, (sa, sb, eq) in SHAPES.items():
      a, b = rng.normal(size=sa).astype(np.float32), rng.normal(size=sb).astype(np.float32)
      ja, jb = jnp.asarray(a, jd), jnp.asarray(b, jd)
      ta, tb = torch.from_numpy(a).to(td), torch.from_numpy(b).to(td)
      jf = jax.jit(lambda x, y, eq=eq: jnp.einsum(eq, x, y))
      jt, tt = [], []
      for _ in range(args.repeats):
        jt.append(timed(lambda: jax.block_until_ready(jf(ja, jb)), 1))
        tt.append(timed(lambda: torch.einsum(eq, ta, tb), 1))
      f = flops(sa, sb, eq)
      j, t = f / np.median(jt) / 1e9, f / np.median(tt) / 1e9
      print(f"{dname:8s} {name:26s} jnp {j:6.0f} GFLOP/s  torch {t:6.0f} GFLOP/s  "
            f"JAX/torch {j / t:5.2f}")
  print(f"load after (uptime): {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
  app.run(main)
