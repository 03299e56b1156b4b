"""Speed of mode=probe against the named baseline: running the frozen backbone every epoch.

  probe      what mode=probe does: backbone features of train, val and test once
             (probe.feature_extractor), then the L-BFGS multinomial logistic regression
             over the whole L2 grid with the choice on val (logistic.fit_with_validation).
  baseline   a linear head on the frozen backbone trained the usual way: every epoch
             the backbone runs over the training subset again (forward only, gradients
             stopped at the features), one AdamW step of the head per batch, for
             `--epochs` epochs (the default run's 15), then one pass over val and test.
             No per-epoch validation (which would only slow the baseline further).

Both use the same random phikon-family checkpoint (ViT, 224x224 input after the 40 -> 224
resize; `--hidden`/`--depth` set its size), the same random 40x40 uint8 patches and batch
size, in one process, measured one after the other after a warm-up (compile) of each.
Prints one comparable line:

  fm_probe: probe ... s vs baseline ... s: ratio baseline/probe = R (speed-up)

  python -m benchmarks.fm_probe [--epochs 15] [--train 512] [--hidden 192] [--depth 4]
"""
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

from cellvit_jax import parallel
from cellvit_jax.config import files as config_files
from cellvit_jax.data import pipeline
from cellvit_jax.engine import logistic
from cellvit_jax.models.fm import foundation
from cellvit_jax.models.fm import tiny as fm_tiny
from cellvit_jax.modes import probe
from cellvit_jax.ops import normalize

FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", 15, "Baseline: epochs of the linear head (the default run's).")
flags.DEFINE_integer("train", 512, "Training patches.")
flags.DEFINE_integer("eval", 256, "Validation patches, and as many test patches.")
flags.DEFINE_integer("batch", 64, "Batch size of both.")
flags.DEFINE_integer("hidden", 192, "Width of the random phikon-family ViT.")
flags.DEFINE_integer("depth", 4, "Depth of the random phikon-family ViT.")


def baseline(model, params, mesh, images, labels, evals, epochs, batch, num_classes):
  """Seconds to train a linear head for `epochs`, re-running the backbone every epoch."""
  rep, data = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  dim = model.hf_config.hidden_size
  tx = optax.adamw(1e-3)
  head = {"w": jnp.zeros((dim, num_classes)), "b": jnp.zeros((num_classes,))}
  opt = tx.init(head)

  def step(head, opt, images, labels):
    feats = jax.lax.stop_gradient(model.apply({"params": params}, normalize.to_float(images)))
    loss_fn = lambda h: optax.softmax_cross_entropy_with_integer_labels(
        feats @ h["w"] + h["b"], labels).mean()
    grads = jax.grad(loss_fn)(head)
    updates, opt = tx.update(grads, opt, head)
    return optax.apply_updates(head, updates), opt

  step = jax.jit(step, in_shardings=(rep, rep, data, data), out_shardings=(rep, rep))
  predict = jax.jit(lambda head, x: jnp.argmax(
      model.apply({"params": params}, normalize.to_float(x)) @ head["w"] + head["b"], -1),
      in_shardings=(rep, data), out_shardings=rep)
  n = len(labels) // batch * batch
  shard = lambda b: parallel.shard_batch(b, mesh)
  warm = shard({"image": images[:batch], "label": labels[:batch]})
  jax.block_until_ready(step(head, opt, warm["image"], warm["label"]))  # compile, untimed
  jax.block_until_ready(predict(head, warm["image"]))
  rng = np.random.default_rng(0)
  t = time.perf_counter()
  for _ in range(epochs):
    order = rng.permutation(len(labels))[:n]
    for i in range(0, n, batch):
      b = shard({"image": images[order[i:i + batch]], "label": labels[order[i:i + batch]]})
      head, opt = step(head, opt, b["image"], b["label"])
  for x, y in evals:  # one final pass over val and test
    for b in pipeline.eval_batches(x, y, batch):
      jax.block_until_ready(predict(head, shard({"image": b["image"]})["image"]))
  jax.block_until_ready(head)
  return time.perf_counter() - t


def main(argv):
  del argv
  args = FLAGS
  rng = np.random.default_rng(0)
  classes = 4
  make = lambda n: (rng.integers(0, 256, (n, 40, 40, 3), dtype=np.uint8),
                    rng.integers(0, classes, n).astype(np.int32))
  (x_tr, y_tr), (x_val, y_val), (x_te, y_te) = make(args.train), make(args.eval), make(args.eval)
  with tempfile.TemporaryDirectory() as tmp:
    weights = fm_tiny.write_tiny("phikon", os.path.join(tmp, "w"), hidden=args.hidden,
                                 depth=args.depth, heads=max(1, args.hidden // 64),
                                 image_size=224, patch_size=16)
    config = config_files.load("configs/fm.py:phikon,probe")
    config.fm.weights = weights
    model = foundation.build(config.fm, 0, config.model.dtype)
    mesh = parallel.make_mesh()
    params = parallel.replicate({"backbone": foundation.pretrained_backbone(config.fm, model)},
                                mesh)

    extract = probe.feature_extractor(model, params, mesh, args.batch)
    extract(x_tr[:args.batch])  # compile, untimed
    logistic.fit(np.zeros((8, args.hidden), np.float32), np.arange(8) % classes, classes, 1e-3,
                 config.fm.probe_max_steps)  # compile, untimed (l2 is traced: one compilation)
    t = time.perf_counter()
    f_tr, f_val, f_te = extract(x_tr), extract(x_val), extract(x_te)
    t_features = time.perf_counter() - t
    mean, std = logistic.standardize_stats(f_tr)
    z = lambda f: (f - mean) / std
    head, l2, _ = logistic.fit_with_validation(z(f_tr), y_tr, z(f_val), y_val, classes,
                                               tuple(config.fm.probe_l2_grid),
                                               config.fm.probe_max_steps)
    logistic.predict(head, z(f_te))
    t_probe = time.perf_counter() - t

    t_base = baseline(model, params, mesh, x_tr, y_tr, [(x_val, y_val), (x_te, y_te)], args.epochs,
                      args.batch, classes)
  print(f"fm_probe: probe (features once: {t_features:.1f} s, + L-BFGS head over "
        f"{len(config.fm.probe_l2_grid)} L2 values) {t_probe:.1f} s vs baseline (backbone every "
        f"epoch, {args.epochs} epochs, AdamW linear head) {t_base:.1f} s: ratio baseline/probe = "
        f"{t_base / t_probe:.1f}x (ViT hidden {args.hidden} depth {args.depth}, 224x224, "
        f"{args.train} train / {args.eval} val / {args.eval} test patches, batch {args.batch}, "
        f"{jax.default_backend()} x{jax.device_count()})")


if __name__ == "__main__":
  app.run(main)
