"""synthetic_cells_v3: the centre lymphocyte inside procedurally generated colorectal tissue.

Same task as synthetic_cells (recipe 2, `synthetic_cells.py`): 40x40 patches, four classes =
the centre cell's CD103/CD8 phenotype, rendered in optical density (Beer-Lambert) from
haematoxylin, DAB (CD8, brown) and a red chromogen (CD103), split by specimen, deterministic
by (seed, specimen). What changes is the context, so that patches look like crops of tissue
rather than isolated cells on glass:
  - a colonic crypt (gland) crosses most patches: a ring of columnar epithelium with
    elongated, paler nuclei sitting basally and radially oriented, cytoplasm towards a lumen
    (near-white, sometimes in view); outside it lamina propria / stroma with a fibrillar
    counterstain texture and spindle (fibroblast) nuclei;
  - lymphocytes (some CD8+ and/or CD103+ themselves: stained neighbours) and plasma cells
    (eccentric nucleus, basophilic cytoplasm) around the centre cell, touching and
    overlapping it and each other;
  - the centre cell is a lymphocyte, intraepithelial more often when CD103+ (the marker of
    intraepithelial T cells); its membrane carries the chromogens of its phenotype as in
    recipe 2 (thin, incomplete rings, weak to strong), non-specific chromogen in cytoplasm and
    background for every class;
  - per specimen: stain vectors, stain and counterstain intensities, brightness, scanner blur,
    noise and JPEG-like 8x8 block quantisation.
Scale (our choice): 0.75 um/px, about that of the reference image at which the realism tool
compares (skimage's colon IHC image, whose nuclei are ~8-15 px across). Sizes used, typical
textbook histology values: lymphocyte 7-10 um (nucleus 5.5-7 um, a thin rim of cytoplasm),
plasma cell 9-13 um with an eccentric 5-6 um nucleus, colonic epithelial nuclei ~8-12 um long
and 3.5-5 um wide, fibroblast nuclei ~10-16 um long and 1.5-3 um wide.
Stain optical densities are calibrated so that the haematoxylin OD (skimage.color.rgb2hed)
and grey-level quantiles of patches match those of nucleus-centred crops of the reference
image (see cellvit_jax/experiments/realism.py and docs/datasets.md).
"""
import numpy as np

from cellvit_jax.data import synthetic_cells
from cellvit_jax.data.synthetic_cells import CLASS_NAMES, SIZE, SyntheticSpec  # noqa: F401

RECIPE_VERSION = 3
_UM_PER_PX = 0.75

_HEMATOXYLIN = np.array([0.650, 0.704, 0.286])
_DAB = np.array([0.268, 0.570, 0.776])
_RED = np.array([0.214, 0.851, 0.478])
# Counterstain of cytoplasm and stroma (pinkish-violet, eosin-like) and of mucus.
_COUNTER = np.array([0.26, 0.78, 0.58])

_YY, _XX = np.mgrid[:SIZE, :SIZE].astype(np.float32)


def _u(rng, low, high, shape):
  return (low + (high - low) * rng.random(shape, dtype=np.float32)).astype(np.float32)


def _px(um):
  return um / _UM_PER_PX


def _unit(v):
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _specimen_style(rng):
  jitter = lambda v: _unit(np.clip(v + rng.normal(0, 0.08, 3), 0.05, None))
  return dict(
      h=jitter(_HEMATOXYLIN), dab=jitter(_DAB), red=jitter(_RED), counter=jitter(_COUNTER),
      h_gain=rng.uniform(0.85, 1.15), chromogen_gain=rng.uniform(0.7, 1.3),
      counter_gain=rng.uniform(1.0, 1.3), nonspecific=rng.uniform(0.0, 0.10),
      brightness=rng.uniform(1.0, 1.02), noise=rng.uniform(0.02, 0.03),
      blur=rng.uniform(0.5, 0.9), jpeg_step=rng.uniform(0.0, 0.06),
      gland_fraction=rng.uniform(0.5, 0.95), loose_fraction=rng.uniform(0.2, 0.5))


def _ellipses(cy, cx, a, b, angle, edge=1.0):
  """Soft filled ellipses, (n, k, 40, 40); inputs (n, k): centre, semi-axes (px), angle."""
  e = lambda v: v[:, :, None, None]
  dy, dx = _YY - e(cy), _XX - e(cx)
  c, s = np.cos(e(angle)), np.sin(e(angle))
  u, v = c * dx + s * dy, -s * dx + c * dy
  r = np.sqrt((u / e(a)) ** 2 + (v / e(b)) ** 2)
  # A linear ramp across the edge (about 2 / edge px wide): as soft as a tanh, cheaper.
  return np.clip(0.5 - (r - 1.0) * (e(b) * (0.5 * edge)), 0.0, 1.0)


def _fibres(rng, n, angle):
  """Fibrillar texture in [0, 1]: high-frequency plane waves around a dominant direction."""
  field = np.zeros((n, SIZE, SIZE), np.float32)
  for _ in range(5):
    a = angle + _u(rng, -0.35, 0.35, (n, 1, 1)) + np.float32(np.pi / 2)
    f = _u(rng, 0.8, 1.8, (n, 1, 1))
    field += np.cos(f * (np.cos(a) * _XX + np.sin(a) * _YY) + _u(rng, 0, 2 * np.pi, (n, 1, 1)))
  return np.clip(0.5 + field / 5.0, 0.0, 1.0)


def _smooth(rng, n, freq=(0.05, 0.3)):
  field = np.zeros((n, SIZE, SIZE), np.float32)
  for _ in range(3):
    a = _u(rng, 0, 2 * np.pi, (n, 1, 1))
    f = _u(rng, freq[0], freq[1], (n, 1, 1))
    field += np.cos(f * (np.cos(a) * _XX + np.sin(a) * _YY) + _u(rng, 0, 2 * np.pi, (n, 1, 1)))
  return 0.5 + field / 6.0


def _membranes(rng, n, k, cy, cx, radius, phenotype, style, centre, nonspecific_fraction):
  """(DAB, red) concentrations of k lymphocyte membranes per patch, each (n, 40, 40).

  phenotype: (n, k, 2) booleans (CD103+, CD8+)."""
  e = lambda v: v[:, :, None, None]
  dy, dx = _YY - e(cy), _XX - e(cx)
  dist = np.sqrt(dy ** 2 + dx ** 2)
  theta = np.arctan2(dy, dx)
  width = e(_u(rng, 0.5, 0.9, (n, k)))
  ring = np.exp(-((dist - e(radius)) ** 2) / (2 * width ** 2))
  inside = np.clip(0.5 - (dist - e(radius) + 1.0) * 0.75, 0.0, 1.0)
  out = []
  for positive in (phenotype[..., 1], phenotype[..., 0]):  # DAB = CD8, red = CD103
    coverage = e(_u(rng, 0.0, 0.8, (n, k)))
    lobes = e(rng.integers(1, 4, (n, k)).astype(np.float32))
    arc = 1.0 - coverage * 0.5 * (1 + np.cos(lobes * theta + e(_u(rng, 0, 2 * np.pi, (n, k)))))
    low = 0.3 if centre else 0.1
    amp = np.where(positive, _u(rng, low, 1.0, (n, k)), 0.0).astype(np.float32)
    diffuse = ((rng.random((n, k)) < nonspecific_fraction) * _u(rng, 0.05, 0.35, (n, k)))
    layer = (e(amp) * 1.2 * ring * arc + e(diffuse.astype(np.float32)) * inside).sum(axis=1)
    out.append(layer * np.float32(style["chromogen_gain"]))
  return out


def _phenotypes(labels):
  table = np.array([[1, 1], [1, 0], [0, 1], [0, 0]], bool)
  return table[labels]


def _jpeg_like(rgb, step):
  """8x8 block DCT quantisation of luminance (40 = 5 blocks), as a JPEG codec does."""
  i = np.arange(8)
  d = np.sqrt(2 / 8) * np.cos(np.pi * (2 * i[None] + 1) * i[:, None] / 16)
  d[0] /= np.sqrt(2)
  d = d.astype(np.float32)
  y = rgb.mean(axis=-1)
  n = len(y)
  blocks = y.reshape(n, 5, 8, 5, 8).transpose(0, 1, 3, 2, 4)
  coef = d @ blocks @ d.T  # matmul, not einsum: it batches through BLAS
  # Coarser steps at high frequency, as in JPEG's luminance table.
  q = np.float32(step) * (1.0 + (i[:, None] + i[None]).astype(np.float32) / 2.0)
  coef = np.round(coef / q) * q
  back = d.T @ coef @ d
  y2 = back.transpose(0, 1, 3, 2, 4).reshape(n, SIZE, SIZE)
  return rgb + (y2 - y)[..., None]


def render(rng, labels, style, nonspecific_fraction=0.5):
  """Patches with centre-cell phenotypes `labels`; uint8 (n, 40, 40, 3)."""
  n = len(labels)
  pheno = _phenotypes(labels)
  f32 = np.float32

  # Gland: a crypt of radius R whose epithelial ring passes near the centre, or none.
  has_gland = rng.random(n) < style["gland_fraction"]
  # CD103+ cells are mostly intraepithelial: the centre sits in the epithelium more often.
  intraepi = rng.random(n) < np.where(pheno[:, 0], 0.65, 0.3)
  big_r = _u(rng, _px(20), _px(45), n)
  epi_w = _u(rng, _px(14), _px(22), n)        # columnar cell height
  # Signed distance of the patch centre from the basement membrane (outer edge of the ring);
  # negative = inside the epithelium.
  centre_depth = np.where(intraepi, -_u(rng, _px(2), _px(7), n), _u(rng, _px(3), _px(22), n))
  ga = _u(rng, 0, 2 * np.pi, n)
  gcy = 20 + (big_r + centre_depth) * np.sin(ga)
  gcx = 20 + (big_r + centre_depth) * np.cos(ga)
  e = lambda v: v[:, None, None]
  rad = np.sqrt((_YY - e(gcy)) ** 2 + (_XX - e(gcx)) ** 2)
  soft = lambda x: 0.5 + 0.5 * np.tanh(x)
  g = e(has_gland.astype(f32))
  epithelium = g * soft((e(big_r) - rad) * 1.2) * soft((rad - e(big_r - epi_w)) * 1.2)
  lumen = g * soft((e(big_r - epi_w) - rad) * 1.2)
  stroma = 1.0 - epithelium - lumen

  # Counterstain: fibrillar stroma, finely granular epithelial cytoplasm, wisps of mucus.
  counter = (stroma * (0.25 + 0.65 * _fibres(rng, n, _u(rng, 0, np.pi, (n, 1, 1))))
             + epithelium * (0.45 + 0.25 * _smooth(rng, n, (0.3, 0.9)))
             + lumen * 0.12 * _smooth(rng, n))
  # Tissue density: most crops are packed tissue, some loose or at a tissue edge (cells
  # on a near-white ground), as in the reference image.
  loose = rng.random(n) < style["loose_fraction"]
  density = np.where(loose, _u(rng, 0.08, 0.32, n), _u(rng, 0.95, 2.45, n))[:, None, None]
  density = density * (0.7 + 0.6 * _smooth(rng, n, (0.05, 0.2)))
  counter *= density * f32(style["counter_gain"])
  h = (0.24 + 0.3 * _smooth(rng, n)) * (stroma + 0.8 * epithelium + 0.1 * lumen) * density ** 0.5
  nonspecific = _smooth(rng, n) * f32(style["nonspecific"]) * (1 - lumen)
  dab = _u(rng, 0, 1, (n, 1, 1)) * nonspecific
  red = _u(rng, 0, 1, (n, 1, 1)) * nonspecific[:, ::-1]

  # Epithelial nuclei: a palisade along the ring, basal, long axis radial, paler chromatin.
  ke = 9
  j = np.arange(ke, dtype=f32) - (ke - 1) / 2
  spacing = _u(rng, _px(4.5), _px(6.5), (n, 1))
  rn = (big_r - _u(rng, _px(4), _px(7), n))[:, None]
  ang = np.arctan2(20 - gcy, 20 - gcx)[:, None] + j * spacing / rn + _u(rng, -0.08, 0.08, (n, ke))
  ecy = gcy[:, None] + rn * np.sin(ang) + _u(rng, -1.0, 1.0, (n, ke))
  ecx = gcx[:, None] + rn * np.cos(ang) + _u(rng, -1.0, 1.0, (n, ke))
  enuc = _ellipses(ecy, ecx, _u(rng, _px(4), _px(6), (n, ke)), _u(rng, _px(1.8), _px(2.6), (n, ke)),
                   ang + _u(rng, -0.25, 0.25, (n, ke)))
  present = (has_gland[:, None] & (rng.random((n, ke)) < 0.9)) * _u(rng, 0.4, 0.65, (n, ke))
  h += np.einsum("nk,nkyx->nyx", present.astype(f32), enuc)

  # Stromal spindle nuclei, only where stroma is.
  ks = 4
  scy, scx = _u(rng, -4, 44, (2, n, ks))
  snuc = _ellipses(scy, scx, _u(rng, _px(5), _px(8), (n, ks)),
                   _u(rng, _px(0.8), _px(1.5), (n, ks)), _u(rng, 0, np.pi, (n, ks)), edge=1.0)
  at = lambda field, y, x: field[np.arange(n)[:, None], np.clip(y, 0, 39).astype(int),
                                 np.clip(x, 0, 39).astype(int)]
  s_at = at(stroma, scy, scx)
  h += np.einsum("nk,nkyx->nyx", (s_at > 0.5) * _u(rng, 0.4, 0.72, (n, ks)), snuc)

  # Plasma cells: basophilic cytoplasm around an eccentric, dense nucleus (stroma only).
  kp = 2
  pcy, pcx = _u(rng, -2, 42, (2, n, kp))
  p_at = at(stroma, pcy, pcx)
  p_on = ((p_at > 0.5) & (rng.random((n, kp)) < 0.6)).astype(f32)
  pang = _u(rng, 0, 2 * np.pi, (n, kp))
  pcyto = _ellipses(pcy, pcx, _u(rng, _px(5), _px(6.5), (n, kp)),
                    _u(rng, _px(4), _px(5), (n, kp)), pang)
  off = _px(2.0)
  pnuc = _ellipses(pcy + off * np.sin(pang), pcx + off * np.cos(pang),
                   _u(rng, _px(2.6), _px(3.2), (n, kp)), _u(rng, _px(2.4), _px(3.0), (n, kp)), pang)
  h += np.einsum("nk,nkyx->nyx", p_on * 0.1, pcyto) + np.einsum("nk,nkyx->nyx", p_on * 0.85, pnuc)
  counter += np.einsum("nk,nkyx->nyx", p_on * 0.2, pcyto)

  # Neighbouring lymphocytes (random phenotypes), some touching the centre cell.
  kl = 5
  lr = _u(rng, _px(2.8), _px(3.5), (n, kl))
  # The first one touches the centre cell; the others anywhere around it.
  dist_c = np.concatenate([_u(rng, _px(6), _px(9), (n, 1)),
                           _u(rng, _px(6), _px(24), (n, kl - 1))], 1)
  la = _u(rng, 0, 2 * np.pi, (n, kl))
  lcy, lcx = 20 + dist_c * np.sin(la), 20 + dist_c * np.cos(la)
  l_on = (rng.random((n, kl)) < 0.7).astype(f32)
  lnuc = _ellipses(lcy, lcx, lr, lr * _u(rng, 0.8, 1.0, (n, kl)), _u(rng, 0, np.pi, (n, kl)),
                   edge=1.0)
  h += np.einsum("nk,nkyx->nyx", l_on * _u(rng, 0.4, 0.69, (n, kl)), lnuc)
  nb_pheno = _phenotypes(rng.integers(0, 4, (n, kl))) & (l_on[..., None] > 0)
  nd, nr = _membranes(rng, n, kl, lcy, lcx, lr + _px(0.9), nb_pheno, style, False,
                      nonspecific_fraction)
  dab += nd
  red += nr

  # Centre lymphocyte on top: it occludes what lies under it.
  cy, cx = (19.5 + 1.2 * rng.standard_normal((2, n), dtype=f32))
  cr = _u(rng, _px(3.0), _px(3.8), n)
  cell_r = cr + _u(rng, _px(0.8), _px(1.4), n)
  cnuc = _ellipses(cy[:, None], cx[:, None], cr[:, None], (cr * _u(rng, 0.8, 1.0, n))[:, None],
                   _u(rng, 0, np.pi, (n, 1)), edge=1.0)[:, 0]
  cmask = _ellipses(cy[:, None], cx[:, None], cell_r[:, None] + 0.8, cell_r[:, None] + 0.8,
                    np.zeros((n, 1), f32))[:, 0]
  cd, crd = _membranes(rng, n, 1, cy[:, None], cx[:, None], cell_r[:, None], pheno[:, None],
                       style, True, nonspecific_fraction)
  keep = 1.0 - 0.7 * cmask
  h = h * keep + cnuc * _u(rng, 0.53, 0.81, (n, 1, 1)) + cmask * 0.04
  dab = dab * keep + cd
  red = red * keep + crd
  counter = counter * keep + cmask * 0.1

  # Chromatin texture on all nuclei, stain gains.
  texture = 1.0 + 0.25 * rng.standard_normal((n, SIZE, SIZE), dtype=f32)
  h = h * texture * f32(style["h_gain"])
  stains = np.stack([style["h"], style["dab"], style["red"], style["counter"]]).astype(f32)
  od = np.stack([0.6 * h, dab, red, 1.0 * counter], axis=-1) @ stains
  od = od * _u(rng, 0.75, 1.25, (n, 1, 1, 1))
  rgb = np.exp(-od) * f32(style["brightness"]) * _u(rng, 0.99, 1.01, (n, 1, 1, 1))
  rgb = synthetic_cells._blur(rgb, style["blur"])
  rgb = rgb + f32(style["noise"]) * rng.standard_normal(rgb.shape, dtype=f32)
  if style["jpeg_step"] > 0.01:
    rgb = _jpeg_like(rgb, style["jpeg_step"])
  return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def generate_specimen(spec: SyntheticSpec, specimen: int, chunk: int = 250):
  """All cells of one specimen: (uint8 (n, 40, 40, 3), int64 labels (n,)). Balanced classes."""
  rng = np.random.default_rng([spec.seed, specimen, RECIPE_VERSION])
  style = _specimen_style(rng)
  labels = rng.permutation(np.arange(spec.cells_per_specimen) % len(CLASS_NAMES))
  images = [render(rng, labels[i:i + chunk], style, spec.nonspecific_fraction)
            for i in range(0, len(labels), chunk)]
  return np.concatenate(images), labels.astype(np.int64)


def examples(spec: SyntheticSpec, split: str, workers: int = 1):
  """The example dicts of one split, as synthetic_cells.examples but with this renderer."""
  return synthetic_cells.examples(spec, split, workers, generate=generate_specimen)
