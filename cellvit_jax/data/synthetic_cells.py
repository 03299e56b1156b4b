"""synthetic_cells: procedural 40x40 IHC-like single-cell patches (the embedded default dataset).

It mimics CD103/CD8 double immunostaining of colorectal tissue (the paper's setting) so the
study can run anywhere with no download. Each patch is rendered in optical density
(Beer-Lambert: RGB = 255 * exp(-sum_k c_k * v_k)) from three stains:
  - haematoxylin (blue counterstain) in nuclei and, faintly, in the tissue background;
  - DAB (brown), standing for CD8, on the membrane of CD8+ cells;
  - a red chromogen (Fast Red-like), standing for CD103, on the membrane of CD103+ cells.
The four classes are the phenotypes of the centre cell: CD103+CD8+, CD103+CD8-,
CD103-CD8+, negative. What makes it a learning problem rather than a colour lookup:
  - neighbouring cells of random phenotype at the patch border carry the same stains, so
    global colour statistics are misleading and the model must look at the centre cell;
  - membrane rings are thin (~1 px) and often incomplete, chromogen intensity varies from
    weak to strong and negatives carry faint non-specific chromogen, so some cells are
    genuinely ambiguous (accuracy below 100% is expected);
  - each synthetic specimen has its own stain vectors, stain intensity, background and
    scanner brightness/noise/focus, so a split by specimen tests generalisation across
    specimens as in the real study.
Deterministic by seed: a specimen's cells depend only on (seed, specimen index).
"""
import dataclasses

import numpy as np

CLASS_NAMES = ("CD103+CD8+", "CD103+CD8-", "CD103-CD8+", "negative")
# Bumped whenever the renderer changes what a (spec, seed) produces; recorded with a build
# so a dataset rendered by older code is noticed instead of silently mixed in.
RECIPE_VERSION = 2
SIZE = 40

# Optical-density stain vectors (unit length). Haematoxylin and DAB are the standard
# Ruifrok & Johnston (2001) vectors; the red chromogen absorbs green and blue.
_HEMATOXYLIN = np.array([0.650, 0.704, 0.286])
_DAB = np.array([0.268, 0.570, 0.776])
_RED = np.array([0.214, 0.851, 0.478])


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """How big the dataset is and how it is split (by specimen)."""
  num_specimens: int = 100
  cells_per_specimen: int = 800   # 84 train specimens x 200 per class = 16,800 per class
  seed: int = 0
  # Specimens per split, in order train / val / test; the rest of num_specimens is train.
  val_specimens: int = 8
  test_specimens: int = 8
  # Fraction of cells (each chromogen drawn separately) with non-specific cytoplasmic
  # staining: the main thing that defeats colour-counting models. 0 gives an easy variant.
  nonspecific_fraction: float = 0.5


def _u(rng, low, high, shape):
  """Uniform draws in float32: the renderer is numpy-bound, float32 halves its time."""
  return (low + (high - low) * rng.random(shape, dtype=np.float32)).astype(np.float32)


def _unit(v):
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _specimen_style(rng):
  """Per-specimen stain vectors, intensities and scanner characteristics."""
  jitter = lambda v: _unit(np.clip(v + rng.normal(0, 0.08, 3), 0.05, None))
  return dict(
      h=jitter(_HEMATOXYLIN), dab=jitter(_DAB), red=jitter(_RED),
      h_gain=rng.uniform(0.7, 1.3), chromogen_gain=rng.uniform(0.7, 1.3),
      background_h=rng.uniform(0.03, 0.12), background_eosin=rng.uniform(0.0, 0.08),
      nonspecific=rng.uniform(0.0, 0.10), brightness=rng.uniform(0.9, 1.05),
      noise=rng.uniform(0.01, 0.03), focus=rng.uniform(0.0, 0.7))


def _smooth_field(rng, n, scale):
  """Low-frequency tissue texture: a sum of random plane waves, shape (n, 40, 40)."""
  yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
  field = np.zeros((n, SIZE, SIZE), np.float32)
  for _ in range(3):
    freq = _u(rng, 0.05, 0.35, (n, 1, 1))
    angle = _u(rng, 0, 2 * np.pi, (n, 1, 1))
    phase = _u(rng, 0, 2 * np.pi, (n, 1, 1))
    field += np.cos(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
  return np.float32(scale) * (0.5 + field / 6.0)


def _cell_layers(rng, n, cy, cx, phenotype, style, centre, nonspecific_fraction):
  """Concentrations (haematoxylin, DAB, red) of one cell per patch, each (n, 40, 40)."""
  yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
  radius = _u(rng, 6.0, 9.0, (n, 1, 1))
  elong = _u(rng, 0.8, 1.25, (n, 1, 1))
  angle = _u(rng, 0, np.pi, (n, 1, 1))
  dy, dx = yy - cy[:, None, None], xx - cx[:, None, None]
  u = np.cos(angle) * dx + np.sin(angle) * dy
  v = (-np.sin(angle) * dx + np.cos(angle) * dy) * elong
  dist = np.sqrt(u ** 2 + v ** 2)
  theta = np.arctan2(v, u)

  # Nucleus: a smaller, slightly off-centre ellipse with chromatin texture.
  nr = radius * _u(rng, 0.5, 0.7, (n, 1, 1))
  off = rng.standard_normal((n, 2, 1, 1), dtype=np.float32)
  ndist = np.sqrt((u - off[:, 0]) ** 2 + (v - off[:, 1]) ** 2)
  nucleus = 0.5 - 0.5 * np.tanh((ndist - nr) * 1.25)  # a soft disc edge
  texture = 1.0 + 0.25 * rng.standard_normal((n, SIZE, SIZE), dtype=np.float32)
  h = nucleus * texture * _u(rng, 0.5, 1.1, (n, 1, 1)) * style["h_gain"]

  # Membrane: a thin ring at the cell edge, incomplete by a random angular modulation.
  # Non-specific cytoplasmic chromogen (a common staining artefact) fills some cells of
  # every class with as much colour as a ring carries: only the ring's shape, not the
  # amount of colour, tells a positive cell.
  width = _u(rng, 0.6, 1.2, (n, 1, 1))
  ring = np.exp(-((dist - radius) ** 2) / (2 * width ** 2))
  inside = 0.5 - 0.5 * np.tanh((dist - radius + 1.5) * 1.5)
  layers = []
  for positive in (phenotype[:, 1], phenotype[:, 0]):  # DAB = CD8, red = CD103
    coverage = _u(rng, 0.0, 0.8, (n, 1, 1))
    k = rng.integers(1, 4, (n, 1, 1))
    arc = 1.0 - coverage * 0.5 * (1 + np.cos(k * theta + _u(rng, 0, 2 * np.pi, (n, 1, 1))))
    # Weak to strong positives; centre-cell positives are never vanishingly weak so the
    # label stays mostly decidable, neighbours may be anything.
    low = 0.25 if centre else 0.1
    amp = np.where(positive[:, None, None], _u(rng, low, 1.0, (n, 1, 1)), 0.0)
    diffuse = (rng.random((n, 1, 1)) < nonspecific_fraction) * _u(rng, 0.05, 0.4, (n, 1, 1))
    layers.append((amp * ring * arc + diffuse * inside) * style["chromogen_gain"])
  cell_mask = dist < radius + 1.5
  return h, layers[0], layers[1], cell_mask


def _phenotypes(labels):
  """labels -> (n, 2) booleans (CD103+, CD8+) in CLASS_NAMES order."""
  table = np.array([[1, 1], [1, 0], [0, 1], [0, 0]], bool)
  return table[labels]


def render(rng, labels, style, nonspecific_fraction=0.5):
  """Renders patches with centre-cell phenotypes `labels`; returns uint8 (n, 40, 40, 3)."""
  n = len(labels)
  h = _smooth_field(rng, n, style["background_h"])
  eosin_like = _smooth_field(rng, n, style["background_eosin"])
  nonspecific = _smooth_field(rng, n, style["nonspecific"])
  dab = _u(rng, 0, 1, (n, 1, 1)) * nonspecific
  red = _u(rng, 0, 1, (n, 1, 1)) * nonspecific[:, ::-1]

  # Neighbours first (partly outside the patch), then the centre cell on top.
  num_neighbours = rng.integers(1, 5, n)
  for j in range(4):
    present = (j < num_neighbours)[:, None, None]
    r = _u(rng, 12.0, 22.0, n)
    a = _u(rng, 0, 2 * np.pi, n)
    cy, cx = 20 + r * np.sin(a), 20 + r * np.cos(a)
    nh, nd, nr_, mask = _cell_layers(rng, n, cy, cx, _phenotypes(rng.integers(0, 4, n)), style,
                                      False, nonspecific_fraction)
    h += present * nh
    dab += present * nd
    red += present * nr_
  cy, cx = 19.5 + 1.5 * rng.standard_normal((2, n), dtype=np.float32)
  ch, cd, cr, mask = _cell_layers(rng, n, cy, cx, _phenotypes(labels), style, True,
                                 nonspecific_fraction)
  # The centre cell occludes what lies under it.
  h = np.where(mask, ch + 0.3 * h, h)
  dab = np.where(mask, cd + 0.3 * dab, dab)
  red = np.where(mask, cr + 0.3 * red, red)

  stains = np.stack([style["h"], style["dab"], style["red"], [0.07, 0.99, 0.11]]).astype(np.float32)
  od = np.stack([h, dab, red, eosin_like], axis=-1) @ stains
  # Stain intensity and illumination vary per image as well as per specimen.
  od = od * _u(rng, 0.75, 1.25, (n, 1, 1, 1))
  rgb = np.exp(-od) * style["brightness"] * _u(rng, 0.9, 1.08, (n, 1, 1, 1))
  if style["focus"] > 0.05:  # scanner focus: a light separable blur per specimen
    rgb = _blur(rgb, style["focus"])
  rgb = rgb + np.float32(style["noise"]) * rng.standard_normal(rgb.shape, dtype=np.float32)
  return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def _blur(images, sigma):
  radius = 2
  k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2).astype(np.float32)
  k /= k.sum()
  padded = np.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
  out = sum(w * padded[:, i:i + SIZE] for i, w in enumerate(k))
  return sum(w * out[:, :, i:i + SIZE] for i, w in enumerate(k))


def specimen_split(spec: SyntheticSpec, specimen: int) -> str:
  """Specimens are assigned to splits by a seeded permutation, never by patch."""
  order = np.random.default_rng([spec.seed, 7]).permutation(spec.num_specimens)
  rank = int(np.where(order == specimen)[0][0])
  if rank < spec.test_specimens:
    return "test"
  if rank < spec.test_specimens + spec.val_specimens:
    return "val"
  return "train"


def generate_specimen(spec: SyntheticSpec, specimen: int, chunk: int = 500):
  """All cells of one specimen: (images uint8 (n,40,40,3), labels int (n,)). Balanced classes."""
  rng = np.random.default_rng([spec.seed, specimen])
  style = _specimen_style(rng)
  labels = rng.permutation(np.arange(spec.cells_per_specimen) % len(CLASS_NAMES))
  images = [render(rng, labels[i:i + chunk], style, spec.nonspecific_fraction)
            for i in range(0, len(labels), chunk)]
  return np.concatenate(images), labels.astype(np.int64)


def check(spec: SyntheticSpec):
  if spec.num_specimens < spec.val_specimens + spec.test_specimens + 1:
    raise ValueError(f"synthetic_cells needs more specimens ({spec.num_specimens}) than "
                     f"val + test specimens ({spec.val_specimens} + {spec.test_specimens})")
  if spec.cells_per_specimen < len(CLASS_NAMES):
    raise ValueError(f"cells_per_specimen={spec.cells_per_specimen} is below the number of "
                     f"classes ({len(CLASS_NAMES)})")


def _render_specimen(args):
  spec, s, generate = args
  return s, generate(spec, s)


def examples(spec: SyntheticSpec, split: str, workers: int = 1, generate=None):
  """Yields the example dicts of one split, specimen by specimen, deterministically.

  Specimens render independently, so `workers` > 1 renders them in a thread pool: numpy
  releases the GIL in its array maths, and threads (unlike spawned processes) never
  re-import the caller's __main__, so scripts and notebooks without a main guard work.
  The order of the output does not depend on it. `generate` is the recipe's
  generate_specimen (default: this recipe's).
  """
  check(spec)
  specimens = [s for s in range(spec.num_specimens) if specimen_split(spec, s) == split]
  jobs = [(spec, s, generate or generate_specimen) for s in specimens]
  if workers > 1:
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(workers) as pool:
      yield from _to_examples(pool.map(_render_specimen, jobs))
  else:
    yield from _to_examples(map(_render_specimen, jobs))


def _to_examples(rendered):
  for s, (images, labels) in rendered:
    for i, (image, label) in enumerate(zip(images, labels)):
      yield dict(image=image, label=int(label), specimen=f"specimen{s:04d}",
                 x=-1.0, y=-1.0, source=f"synthetic:{s}:{i}")
