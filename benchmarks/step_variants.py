"""Candidate speed-ups of the CustomViT train step, timed against the library's step in one run.

    python -m benchmarks.step_variants [--dtype=float32] [--repeats=6] [--variants=...] \
        [--plain]

Each variant swaps one piece of the model or optimiser in process (parameter shapes and
names unchanged) and builds the same jitted step as benchmarks/train_step.py; the variants
are timed one step each, interleaved, `--repeats` times; median and min are printed, and
the median ratio to 'library'.
With --plain the model is the first design (configs/customvit_plain.py's switches: linear 4x4
patches, 101 tokens), the model of the profiles in FINDINGS.md. Variants:
  library        cellvit_jax as it is (layers.SelfAttention, layers.DropPath, optax chain);
  scale_q        the 1/sqrt(head_dim) scale folded into q instead of the (B, H, N, N) logits;
  heads_major    q, k, v moved to (B, H, N, d) by one transpose of the qkv output, scale on q;
  dpa            jax.nn.dot_product_attention on the (B, N, H, d) q, k, v (XLA implementation);
  droppath_mul   DropPath as x * (mask / keep) instead of where(mask, x / keep, 0);
  flat_optim     the optimiser wrapped in optax.flatten (one update over one flat vector
                 instead of one per parameter array; changes the opt_state layout);
  dense_3d       the previous library form: the qkv, proj and MLP Dense layers on the 3-D
                 (B, N, D) tokens instead of layers.token_dense's 2-D view (FINDINGS.md).
"""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from benchmarks import train_step
from cellvit_jax import parallel
from cellvit_jax.engine import optimizer
from cellvit_jax.models import layers

FLAGS = flags.FLAGS
flags.DEFINE_string("dtype", "float32", "Compute dtype of the step.")
flags.DEFINE_integer("repeats", 6, "Timed steps per variant (interleaved).")
flags.DEFINE_string("variants",
                    "library,scale_q,heads_major,dpa,droppath_mul,flat_optim,dense_3d",
                    "Comma list of variants to time.")
flags.DEFINE_bool("plain", False, "Time the first design (linear 4x4 patches) instead of the "
                  "default CustomViT.")
PLAIN = {"tokenizer": "patch", "patch_size": 4}


def _dense(self, features, name, x, flat=True):
  layer = nn.Dense(features, dtype=self.dtype, name=name)
  return layers.token_dense(layer, x) if flat else layer(x)


def _qkv(self, x, flat=True):
  b, n, d = x.shape
  hd = d // self.num_heads
  qkv = _dense(self, 3 * d, "qkv", x, flat).reshape(b, n, 3, self.num_heads, hd)
  return qkv, hd


@nn.compact
def scale_q(self, x, train, bias=None):
  b, n, d = x.shape
  qkv, hd = _qkv(self, x)
  q = qkv[:, :, 0] * jnp.asarray(hd ** -0.5, self.dtype)
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, qkv[:, :, 1]).astype(jnp.float32)
  attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
  out = jnp.einsum("bhqk,bkhd->bqhd", attn, qkv[:, :, 2]).reshape(b, n, d)
  return _dense(self, d, "proj", out)


@nn.compact
def heads_major(self, x, train, bias=None):
  b, n, d = x.shape
  qkv, hd = _qkv(self, x)
  qkv = qkv.transpose(2, 0, 3, 1, 4)  # (3, B, H, N, d)
  q = qkv[0] * jnp.asarray(hd ** -0.5, self.dtype)
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, qkv[1]).astype(jnp.float32)
  attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
  out = jnp.einsum("bhqk,bhkd->bhqd", attn, qkv[2]).transpose(0, 2, 1, 3).reshape(b, n, d)
  return _dense(self, d, "proj", out)


@nn.compact
def dpa(self, x, train, bias=None):
  b, n, d = x.shape
  qkv, _ = _qkv(self, x)
  out = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], implementation="xla")
  return _dense(self, d, "proj", out.reshape(b, n, d))


@nn.compact
def droppath_mul(self, x, train):
  if not train or self.rate == 0.0:
    return x
  keep = 1.0 - self.rate
  mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1))
  return x * (mask.astype(x.dtype) / jnp.asarray(keep, x.dtype))


@nn.compact
def attention_3d(self, x, train, bias=None):
  b, n, d = x.shape
  qkv, hd = _qkv(self, x, flat=False)
  logits = jnp.einsum("bqhd,bkhd->bhqk", qkv[:, :, 0], qkv[:, :, 1]).astype(jnp.float32)
  attn = jax.nn.softmax(logits * hd ** -0.5, axis=-1).astype(self.dtype)
  out = jnp.einsum("bhqk,bkhd->bqhd", attn, qkv[:, :, 2]).reshape(b, n, d)
  return _dense(self, d, "proj", out, flat=False)


@nn.compact
def mlp_3d(self, x, train):  # dropout 0 (CustomViT's default), so no Dropout layers
  out_dim = self.out_dim or x.shape[-1]
  x = nn.gelu(_dense(self, self.hidden_dim, "fc1", x, flat=False))
  return _dense(self, out_dim, "fc2", x, flat=False)


# Subclasses (not patched methods) so that Flax wraps __call__ and scopes the submodules as usual;
# EncoderBlock looks `layers.SelfAttention` / `layers.DropPath` up when it is called.
ATTENTION = {name: type(f"SelfAttention_{name}", (layers.SelfAttention,), {"__call__": fn})
             for name, fn in (("scale_q", scale_q), ("heads_major", heads_major), ("dpa", dpa))}
DropPathMul = type("DropPathMul", (layers.DropPath,), {"__call__": droppath_mul})
Attention3d = type("SelfAttention3d", (layers.SelfAttention,), {"__call__": attention_3d})
Mlp3d = type("Mlp3d", (layers.Mlp,), {"__call__": mlp_3d})


def build(variant: str, dtype: str, mesh, model_kwargs=None):
  attn, drop, mlp = layers.SelfAttention, layers.DropPath, layers.Mlp
  make_opt = optimizer.make_optimizer
  try:
    if variant in ATTENTION:
      layers.SelfAttention = ATTENTION[variant]
    elif variant == "dense_3d":
      layers.SelfAttention, layers.Mlp = Attention3d, Mlp3d
    elif variant == "droppath_mul":
      layers.DropPath = DropPathMul
    elif variant == "flat_optim":
      optimizer.make_optimizer = (
          lambda *a, **k: (lambda tx, s: (optax.flatten(tx), s))(*make_opt(*a, **k)))
    elif variant != "library":
      raise ValueError(f"unknown variant {variant!r}")
    # traced and compiled here
    return train_step.jax_variant("customvit", dtype, 256, mesh, model_kwargs=model_kwargs)[0]
  finally:
    layers.SelfAttention, layers.DropPath, layers.Mlp = attn, drop, mlp
    optimizer.make_optimizer = make_opt


def main(argv):
  del argv
  args = FLAGS
  print(f"load (uptime): {os.popen('uptime').read().strip()}")
  mesh = parallel.make_mesh()
  kwargs = PLAIN if args.plain else None
  runs = {v: build(v, args.dtype, mesh, kwargs) for v in args.variants.split(",")}
  times = {v: [] for v in runs}
  for _ in range(args.repeats):
    for v, run in runs.items():
      times[v].append(run(1))
  base = np.array(times.get("library", next(iter(times.values()))))
  for v, t in times.items():
    t = np.array(t)
    name = "customvit_plain" if args.plain else "customvit"
    print(f"{name} {args.dtype} {v:13s} step median {np.median(t) * 1e3:7.0f} ms  min "
          f"{t.min() * 1e3:7.0f} ms  library/variant = {np.median(base / t):.2f}")
  print(f"load after (uptime): {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
  app.run(main)
