"""Test-time perturbations of float [0, 1] RGB batches, in jnp, for the robustness suite.

Each perturbation takes `(images, strength, keys)`: images (B, H, W, 3) float in [0, 1],
strength a (B,) float array (one level per sample, traced, so one compiled step serves a
whole severity grid), keys (B,) per-sample PRNG keys (used by the random ones).  A strength
of 0 is the identity for every perturbation (JPEG's "quality 0" means no JPEG).

  hed          stain jitter (Tellez et al. 2018): each of the H, E, D stain amounts of
               colour deconvolution (ops.color, skimage's matrix) scaled by alpha ~ U(1 - s,
               1 + s) and shifted by beta ~ U(-s / 10, s / 10) (our choice: shift in stain
               units a tenth of the scale), per sample and stain.
  brightness   x * (1 +- s), sign drawn per sample (torchvision's brightness), clipped.
  contrast     grey mean m + (1 +- s)(x - m), sign drawn per sample, clipped.
  jpeg         JPEG compression at quality s (1..100), baseline JFIF as libjpeg / PIL do it:
               RGB -> YCbCr (8-bit), 4:2:0 chroma (2x2 box mean), 8x8 orthonormal DCT,
               quantisation by the IJG Annex K tables scaled by quality (libjpeg's
               jpeg_quality_scaling, baseline clamp at 255), dequantisation, inverse DCT,
               triangular ("fancy") chroma upsampling, back to RGB, rounded to 8 bits.
               Float DCT where libjpeg uses integer ones: see tests/test_perturb.py for how
               close to PIL that is.
  rotation     rotation by s degrees about the centre, bilinear, reflect padding
               (skimage.transform.rotate(order=1, mode='symmetric')).
  noise        additive Gaussian noise of standard deviation s (in [0, 1] units), clipped.

Random draws come from per-sample keys that the caller derives from the image itself
(`content_keys`), so a given image gets the same perturbation whatever batch it is in.
"""
import jax
import jax.numpy as jnp
import numpy as np

from cellvit_jax.ops import color

NAMES = ("hed", "brightness", "contrast", "jpeg", "rotation", "noise")


def content_keys(seed: int, images_uint8):
  """(B,) PRNG keys from `seed` and a hash of each uint8 image (batch-order independent)."""
  b = images_uint8.shape[0]
  flat = images_uint8.reshape(b, -1).astype(jnp.uint32)
  # A position-weighted sum mod 2^32 (uint32 wraps): different for shifted / swapped pixels.
  weights = (jnp.arange(flat.shape[1], dtype=jnp.uint32) * jnp.uint32(2654435761)) | 1
  h = jnp.sum(flat * weights, axis=1, dtype=jnp.uint32)
  base = jax.random.key(seed)
  return jax.vmap(lambda d: jax.random.fold_in(base, d))(h)


def _signs(keys):
  return jnp.where(jax.vmap(jax.random.bernoulli)(keys), 1.0, -1.0).astype(jnp.float32)


def hed(images, strength, keys):
  def draw(k):
    ka, kb = jax.random.split(k)
    return (jax.random.uniform(ka, (3,), jnp.float32, -1.0, 1.0),
            jax.random.uniform(kb, (3,), jnp.float32, -1.0, 1.0))
  ua, ub = jax.vmap(draw)(keys)
  s = strength[:, None]
  return color.hed_jitter(images, 1.0 + s * ua, 0.1 * s * ub)


def brightness(images, strength, keys):
  return color.adjust_brightness(images, 1.0 + _signs(keys) * strength)


def contrast(images, strength, keys):
  return color.adjust_contrast(images, 1.0 + _signs(keys) * strength)


def noise(images, strength, keys):
  z = jax.vmap(lambda k: jax.random.normal(k, images.shape[1:], jnp.float32))(keys)
  return jnp.clip(images + strength[:, None, None, None] * z, 0.0, 1.0)


# --- rotation ----------------------------------------------------------------------------

def _reflect(i, n):
  """Index i folded into [0, n) by half-sample symmetric reflection (d c b a | a b c d)."""
  period = 2 * n
  i = jnp.mod(i, period)
  return jnp.where(i >= n, period - 1 - i, i)


def rotate(images, degrees):
  """Counter-clockwise rotation by `degrees` (B,) about the image centre ((n - 1) / 2), bilinear,
  symmetric padding: skimage.transform.rotate(img, deg, order=1, mode='symmetric')."""
  b, h, w, c = images.shape
  theta = jnp.deg2rad(degrees)[:, None, None]
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing="ij")
  # Output pixel (y, x) samples the input at the inverse rotation of its offset (image axes:
  # y down, so a counter-clockwise turn on screen is this sign pattern).
  dy, dx = yy - cy, xx - cx
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  src_x = cos * dx - sin * dy + cx
  src_y = sin * dx + cos * dy + cy
  x0, y0 = jnp.floor(src_x), jnp.floor(src_y)
  fx, fy = (src_x - x0)[..., None], (src_y - y0)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  bi = jnp.arange(b)[:, None, None]

  def at(yi, xi):
    return images[bi, _reflect(yi, h), _reflect(xi, w)]

  top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
  bottom = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
  return top * (1 - fy) + bottom * fy


def rotation(images, strength, keys):
  del keys
  return rotate(images, strength)


# --- JPEG --------------------------------------------------------------------------------

# ITU-T T.81 Annex K.1 / K.2 (the IJG defaults), row-major in natural (not zigzag) order.
LUMA_TABLE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]).reshape(8, 8)
CHROMA_TABLE = np.array([
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99,
    99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99, 99]).reshape(8, 8)


def quant_tables(quality):
  """(B,) qualities in [1, 100] -> (B, 8, 8) luma and chroma tables, libjpeg's integer rule:
  scale = 5000 / q (q < 50) else 200 - 2q; entry = (base * scale + 50) / 100 in [1, 255]."""
  q = jnp.clip(jnp.round(quality), 1, 100).astype(jnp.int32)
  scale = jnp.where(q < 50, 5000 // q, 200 - 2 * q)[:, None, None]

  def table(base):
    return jnp.clip((jnp.asarray(base, jnp.int32) * scale + 50) // 100, 1, 255).astype(jnp.float32)
  return table(LUMA_TABLE), table(CHROMA_TABLE)


def _dct_matrix():
  k = np.arange(8)
  m = np.sqrt(2 / 8) * np.cos((2 * k[None, :] + 1) * k[:, None] * np.pi / 16)
  m[0] /= np.sqrt(2)
  return m.astype(np.float32)  # orthonormal: JPEG's FDCT is exactly this 2-D transform


_DCT = _dct_matrix()
_HI = jax.lax.Precision.HIGHEST


def _blocks_roundtrip(plane, table):
  """plane (B, H, W), H and W multiples of 8, level-shifted; table (B, 8, 8)."""
  b, h, w = plane.shape
  blocks = plane.reshape(b, h // 8, 8, w // 8, 8)
  d = jnp.asarray(_DCT)
  coef = jnp.einsum("ui,bpiqj,vj->bpuqv", d, blocks, d, precision=_HI)
  t = table[:, None, :, None, :]
  coef = jnp.round(coef / t) * t
  out = jnp.einsum("ui,bpuqv,vj->bpiqj", d, coef, d, precision=_HI)
  return out.reshape(b, h, w)


def _pad_to(x, multiple):
  """Edge-replicate H and W (axes 1, 2) up to a multiple (libjpeg's edge expansion)."""
  h, w = x.shape[1:3]
  ph, pw = -h % multiple, -w % multiple
  return jnp.pad(x, ((0, 0), (0, ph), (0, pw)), mode="edge")


def _fancy_upsample(c):
  """2x triangular upsampling (libjpeg h2v2 'fancy': 3/4 nearer + 1/4 farther sample per axis,
  edge samples replicated)."""
  def along(x, axis):
    n = x.shape[axis]
    prev = jnp.concatenate([jax.lax.slice_in_dim(x, 0, 1, axis=axis),
                            jax.lax.slice_in_dim(x, 0, n - 1, axis=axis)], axis)
    nxt = jnp.concatenate([jax.lax.slice_in_dim(x, 1, n, axis=axis),
                           jax.lax.slice_in_dim(x, n - 1, n, axis=axis)], axis)
    even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
    stacked = jnp.stack([even, odd], axis=axis + 1)
    shape = list(x.shape)
    shape[axis] *= 2
    return stacked.reshape(shape)
  return along(along(c, 1), 2)


def jpeg(images, quality, keys=None):
  """JPEG round trip (8-bit output) at `quality` (B,) in [1, 100]."""
  del keys
  b, h, w, _ = images.shape
  x = jnp.round(jnp.clip(images, 0.0, 1.0) * 255.0)
  r, g, bl = x[..., 0], x[..., 1], x[..., 2]
  # JFIF full-range YCbCr, rounded to 8-bit samples as the encoder stores them.
  y = jnp.round(0.299 * r + 0.587 * g + 0.114 * bl)
  cb = jnp.round(-0.168736 * r - 0.331264 * g + 0.5 * bl + 128.0)
  cr = jnp.round(0.5 * r - 0.418688 * g - 0.081312 * bl + 128.0)
  luma_t, chroma_t = quant_tables(quality)

  y_pad = _pad_to(y, 16)
  hp, wp = y_pad.shape[1:3]
  y_out = _blocks_roundtrip(y_pad - 128.0, luma_t)[:, :h, :w] + 128.0

  def chroma(c):
    c = _pad_to(c, 16)
    c = jnp.round(c.reshape(b, hp // 2, 2, wp // 2, 2).mean(axis=(2, 4)))
    c = jnp.clip(jnp.round(_blocks_roundtrip(c - 128.0, chroma_t) + 128.0), 0.0, 255.0)
    return _fancy_upsample(c)[:, :h, :w]

  y_out = jnp.clip(jnp.round(y_out), 0.0, 255.0)
  cb_out, cr_out = chroma(cb) - 128.0, chroma(cr) - 128.0
  rgb = jnp.stack([y_out + 1.402 * cr_out,
                   y_out - 0.344136 * cb_out - 0.714136 * cr_out,
                   y_out + 1.772 * cb_out], axis=-1)
  return jnp.clip(jnp.round(rgb), 0.0, 255.0) / 255.0


PERTURBATIONS = {"hed": hed, "brightness": brightness, "contrast": contrast, "jpeg": jpeg,
                 "rotation": rotation, "noise": noise}


def apply(name: str, images, strength, keys):
  """Perturbation `name` (one of NAMES) at per-sample `strength` (B,); strength 0 returns the
  sample itself, bit for bit (a factor of exactly 1 can still round in float32)."""
  if name not in PERTURBATIONS:
    raise ValueError(f"unknown perturbation {name!r}; valid: {', '.join(NAMES)}")
  strength = jnp.asarray(strength, jnp.float32)
  out = PERTURBATIONS[name](images, strength, keys)
  return jnp.where((strength != 0)[:, None, None, None], out.astype(images.dtype), images)
