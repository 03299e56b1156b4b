"""Realism of a cell-patch dataset: can a simple classifier tell its patches from real tissue?

    python -m cellvit_jax.experiments.realism --dataset=synthetic_cells_v3 --n=377 \
        --montage=docs/figures/realism_montage.png

Real side: 40x40 crops centred on nuclei of scikit-image's colon IHC image
(`skimage.data.immunohistochemistry()`, DAB + haematoxylin). Nuclei are local maxima of the
smoothed haematoxylin optical density (`skimage.color.rgb2hed`) above Otsu's threshold, at
least 5 px apart, with the whole crop inside the image; the tool keeps up to N of them,
drawn with a fixed seed.

Synthetic side: N patches of the dataset. A synthetic_cells recipe name
(synthetic_cells_v2, synthetic_cells_v3, synthetic_cells = the default recipe) is rendered
directly (a few specimens, nothing built on disk); any other name is read from its test split.

Two-sample test: stain-agnostic statistics of each patch (quantiles of the haematoxylin
optical density and of the grey level, the near-white background fraction, gradient
magnitude and Laplacian statistics), standardised, and an L2 logistic regression scored by
stratified 5-fold cross-validation with a fixed seed. Accuracy 0.5: indistinguishable by
these statistics; 1.0: trivially told apart. Colour hue is left out on purpose: the real image
has no second chromogen, so hue would separate any CD103/CD8 rendering from it.
"""
import json
import sys

import numpy as np

SIZE = 40
_MIN_DISTANCE = 5
FEATURE_NAMES = (
    "h_q05", "h_q25", "h_q50", "h_q75", "h_q95",
    "grey_q05", "grey_q25", "grey_q50", "grey_q75", "grey_q95", "white_fraction",
    "grad_q25", "grad_q50", "grad_q75", "grad_q95", "grad_mean", "grad_std",
    "laplacian_mean", "grey_std", "grey_std_8px")


def real_crops(n: int = 0, seed: int = 0) -> np.ndarray:
  """uint8 (m, 40, 40, 3) crops of skimage's IHC image centred on nuclei; n=0: all."""
  from skimage import color, data, feature, filters
  rgb = np.asarray(data.immunohistochemistry(), np.uint8)
  h = filters.gaussian(color.rgb2hed(rgb)[..., 0], sigma=2)
  peaks = feature.peak_local_max(h, min_distance=_MIN_DISTANCE,
                                 threshold_abs=float(filters.threshold_otsu(h)),
                                 exclude_border=SIZE // 2)
  peaks = peaks[np.lexsort((peaks[:, 1], peaks[:, 0]))]  # row-major, independent of skimage order
  if n and n < len(peaks):
    peaks = peaks[np.sort(np.random.default_rng(seed).choice(len(peaks), n, replace=False))]
  half = SIZE // 2
  return np.stack([rgb[y - half:y + half, x - half:x + half] for y, x in peaks])


def features(images: np.ndarray) -> np.ndarray:
  """Stain-agnostic statistics of uint8 (n, S, S, 3) patches: float64 (n, 20), FEATURE_NAMES."""
  from scipy import ndimage as ndi
  from skimage import color
  x = np.asarray(images, np.float64) / 255.0
  grey = x.mean(axis=-1)
  h_od = np.stack([color.rgb2hed(im)[..., 0] for im in np.asarray(images)])
  q = (0.05, 0.25, 0.5, 0.75, 0.95)
  flat = lambda a: a.reshape(len(a), -1)
  gy = ndi.sobel(grey, axis=1)
  gx = ndi.sobel(grey, axis=2)
  grad = np.hypot(gx, gy)
  lap = np.stack([ndi.laplace(g) for g in grey])
  cols = [
      np.quantile(flat(h_od), q, axis=1).T,
      np.quantile(flat(grey), q, axis=1).T,
      (flat(grey) > 0.85).mean(axis=1, keepdims=True),
      np.quantile(flat(grad), (0.25, 0.5, 0.75, 0.95), axis=1).T,
      flat(grad).mean(axis=1, keepdims=True),
      flat(grad).std(axis=1, keepdims=True),
      flat(np.abs(lap)).mean(axis=1, keepdims=True),
      flat(grey).std(axis=1, keepdims=True),
      # Coarse-scale contrast: how much the patch varies beyond a cell's size.
      flat(ndi.uniform_filter(grey, size=(1, 8, 8))).std(axis=1, keepdims=True),
  ]
  return np.concatenate(cols, axis=1)


def _fit_logistic(x, y, l2: float, steps: int = 50):
  """Binary L2 logistic regression by Newton's method (a few dozen features)."""
  xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  w = np.zeros(xb.shape[1])
  reg = l2 * np.eye(xb.shape[1])
  reg[-1, -1] = 0.0
  for _ in range(steps):
    p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -30, 30)))
    grad = xb.T @ (p - y) / len(y) + reg @ w
    hess = (xb * (p * (1 - p))[:, None]).T @ xb / len(y) + reg + 1e-9 * np.eye(len(w))
    step = np.linalg.solve(hess, grad)
    w -= step
    if np.abs(step).max() < 1e-8:
      break
  return w


def two_sample_accuracy(a: np.ndarray, b: np.ndarray, folds: int = 5, seed: int = 0,
                        l2: float = 1e-2) -> float:
  """Cross-validated accuracy of telling feature rows `a` from `b` (stratified folds)."""
  x = np.concatenate([a, b])
  y = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
  rng = np.random.default_rng(seed)
  fold = np.empty(len(y), int)
  for cls in (0, 1):
    idx = np.flatnonzero(y == cls)
    fold[rng.permutation(idx)] = np.arange(len(idx)) % folds
  correct = 0
  for k in range(folds):
    tr, te = fold != k, fold == k
    mean, std = x[tr].mean(0), x[tr].std(0) + 1e-9
    w = _fit_logistic((x[tr] - mean) / std, y[tr], l2)
    xt = np.concatenate([(x[te] - mean) / std, np.ones((te.sum(), 1))], axis=1)
    correct += int(((xt @ w > 0) == (y[te] == 1)).sum())
  return correct / len(y)


def synthetic_patches(name: str, n: int, seed: int = 0, data_dir: str = ""):
  """(uint8 (n, 40, 40, 3), labels (n,)) of dataset `name`; recipe names render directly."""
  from cellvit_jax.data import datasets, synthetic_cells
  if name in datasets.RECIPES:
    recipe = datasets.recipe_for(name)
    # Few cells per specimen, many specimens: the specimen-level variation is sampled too.
    per = 16
    spec = synthetic_cells.SyntheticSpec(seed=seed, cells_per_specimen=per,
                                         num_specimens=max(17, -(-n // per)))
    images, labels = zip(*(recipe.generate_specimen(spec, s)
                           for s in range(-(-n // per))))
    return np.concatenate(images)[:n], np.concatenate(labels)[:n]
  from cellvit_jax.data import pipeline
  ds = datasets.open_dataset(name, data_dir)
  split = "test" if "test" in ds.splits else ds.splits[0]
  total = len(ds.labels(split))
  idx = np.sort(np.random.default_rng(seed).choice(total, min(n, total), replace=False))
  return pipeline.load_arrays(ds.source(split), idx)


def montage(real, synthetic, labels, class_names, path, per_row: int = 10, scale: int = 1):
  """PNG: a row of real crops, then one row of `per_row` patches per synthetic class."""
  from PIL import Image, ImageDraw
  rows = [("real IHC", real[:per_row])]
  for c, cname in enumerate(class_names):
    rows.append((cname, synthetic[labels == c][:per_row]))
  label_w, gap = 90, 2
  cell = SIZE + gap
  canvas = Image.new("RGB", (label_w + per_row * cell, len(rows) * cell), "white")
  draw = ImageDraw.Draw(canvas)
  for r, (title, ims) in enumerate(rows):
    draw.text((2, r * cell + SIZE // 2 - 5), title, fill="black")
    for i, im in enumerate(ims):
      canvas.paste(Image.fromarray(np.asarray(im, np.uint8)), (label_w + i * cell, r * cell))
  canvas = canvas.resize((canvas.width * scale, canvas.height * scale), Image.NEAREST)
  canvas.save(path, optimize=True)


def measure(name: str, n: int, seed: int = 0, data_dir: str = "", montage_path: str = "",
            per_statistic: bool = False):
  real = real_crops(n, seed)
  synth, labels = synthetic_patches(name, len(real), seed, data_dir)
  fr, fs = features(real), features(synth)
  acc = two_sample_accuracy(fr, fs, seed=seed)
  if montage_path:
    from cellvit_jax.data import synthetic_cells
    montage(real, synth, np.asarray(labels), synthetic_cells.CLASS_NAMES, montage_path)
  from cellvit_jax.data import datasets
  from cellvit_jax.runs import provenance
  recipe = (datasets.recipe_for(name).RECIPE_VERSION if name.startswith(datasets.SYNTHETIC)
            else None)
  return dict(dataset=name, recipe_version=recipe, real="skimage.data.immunohistochemistry",
              n_real=len(real), n_synthetic=len(synth), seed=seed, folds=5, accuracy=acc,
              code_version=provenance.code_version(),
              # Each statistic alone: which ones still tell the two sides apart.
              **({"per_statistic": {k: two_sample_accuracy(fr[:, [i]], fs[:, [i]], seed=seed)
                                    for i, k in enumerate(FEATURE_NAMES)}}
                 if per_statistic else {}))


def main(argv):
  from absl import flags
  del argv
  f = flags.FLAGS
  out = measure(f.dataset, f.n, f.seed, f.data_dir, f.montage, f.per_statistic)
  print(json.dumps(out))
  if f.output:
    from cellvit_jax import atomic_files
    atomic_files.write_text(f.output, json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
  from absl import app, flags
  flags.DEFINE_string("dataset", "synthetic_cells", "Dataset or synthetic_cells recipe name.")
  flags.DEFINE_string("data_dir", "", "Dataset folder for datasets read from disk.")
  flags.DEFINE_integer("n", 377, "Patches per side (real crops: at most the nuclei found).")
  flags.DEFINE_integer("seed", 0, "Seed of the crop draw, the synthetic specimens and the folds.")
  flags.DEFINE_string("montage", "", "Optional PNG path for the montage.")
  flags.DEFINE_string("output", "", "Optional JSON file for the result.")
  flags.DEFINE_bool("per_statistic", False, "Also the accuracy of each statistic alone.")
  sys.exit(app.run(main))
