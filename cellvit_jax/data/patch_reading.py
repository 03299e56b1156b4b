"""Reading image files as patches: decoding, colour rules, resizing, centred crops, Options.

One definition shared by the dataset readers (`data_prep/sources/`, which write training
data) and by prediction on unlabelled patches (`cellvit_jax/data/patch_files.py`), so a patch
is read the same way for training and for prediction.  Pure numpy/PIL.

Conventions shared by all readers (tests in tests/test_sources.py pin them):

* Coordinates are pixels, 0-based, x = column, y = row; the centre of pixel (col i, row j) is
  (i, j).  A crop centred at (x, y) takes the pixel nearest to (x, y) (halves round up) as its
  centre pixel and puts it at crop[size // 2, size // 2]; for the even default of 40 that is
  row/column 20, just below/right of the geometric middle.
* Crops that leave the image are padded, never dropped: the source image is padded with
  `numpy.pad(mode=Options.pad_mode)` (default 'reflect', mirror without repeating the edge
  pixel) and the crop is cut from the padded image, so every mode means what `numpy.pad` says
  it means for the whole image.
* Colour: every image becomes 8-bit RGB.  Grayscale ('1', 'L') and palette ('P') images are
  converted by PIL (gray copied to R=G=B, palette looked up).  Images with transparency (RGBA,
  LA, PA, or a palette/gray image with a transparency key) are composited onto white, because
  transparent pixels in exported patches are usually empty slide background (glass is white in
  brightfield), and dropping alpha would expose whatever colour the exporter left underneath.
  CMYK/YCbCr/LAB/HSV go through PIL's `convert('RGB')`.
* 16-bit: single-channel 16-bit images (PIL modes I;16*, and mode 'I' whose values fit in
  0..65535) are scaled to 8 bits by value / 257 (full-range, so 65535 -> 255 and intensities
  stay comparable between files; no per-file contrast stretch) when `Options.scale_16bit` is
  True (default), else refused.  Pillow itself reads 16-bit-per-channel RGB PNGs as 8-bit RGB.
  Float images (mode 'F') are refused: their range is unknowable.
* Multi-frame files (TIFF stacks, animated GIF): the first frame is used.
* Bad input raises `SourceError` (a ValueError) whose message names the file and the fix, or,
  with `Options.skip_bad`, is left out and counted by the caller
  (`SourceData.skipped` in data_prep, `Patches.skipped` in patch_files).
"""
import dataclasses
import os
import unicodedata
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

# Lower-case file extensions read as images.  Anything else inside a class folder is a
# "non-image file" (see data_prep/sources/folder.py); hidden files and OS droppings are
# ignored everywhere.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".ppm",
                    ".pgm")
IGNORED_FILE_NAMES = frozenset({"thumbs.db", "desktop.ini", "icon\r"})

# numpy.pad modes that make sense for a crop; 'empty' would leave uninitialised memory.
PAD_MODES = ("constant", "edge", "linear_ramp", "maximum", "mean", "median", "minimum",
             "reflect", "symmetric", "wrap")

# The fix a skip-able error suggests; the CLI exposes Options fields as --<field>.
SKIP_HINT = "or pass skip_bad=True (--skip_bad) to skip and count such inputs"


class SourceError(ValueError):
  """An input cannot be used; the message names the input and how to fix it."""


@dataclasses.dataclass
class Options:
  """How a reader turns its input into crops.  Every field has a default that works.

  Attributes:
    patch_size: side of the square crops in pixels (the paper's patches are 40x40).
    pad_mode: `numpy.pad` mode for crops that leave the source image ('reflect', 'symmetric',
      'edge', 'constant', 'wrap', ...).  Crops are never dropped for touching the border.
    pad_value: fill value for pad_mode='constant' (0 = black; 255 = white, like glass).
    resize: patch files (folder / csv without x, y) of another size than patch_size are resized
      with PIL bilinear when True; when False they are refused with an error naming the file, its
      size and this option (`--resize`).
    skip_bad: when True a bad input (corrupt file, non-image, missing file, unknown label, empty
      class folder, ...) is logged, recorded in SourceData.skipped and left out instead of raising.
    scale_16bit: scale 16-bit single-channel images to 8 bits (value / 257); refuse them if False.
    class_names: optional fixed class list.  folder/csv: labels must be among them (others are
      "unknown label" errors) and label indices follow this order.  pannuke/lizard/ihc_demo: a
      subset of the dataset's own class names to keep, in this order (other nuclei are left out
      and counted in info['dropped_by_class']).
    specimen_pattern: folder: a regex with a named group `specimen`, searched (`re.search`) in
      each file name (with extension), e.g. r'^(?P<specimen>P\\d+)-'.  Default (None): the part
      of the file stem before the first '_' ('P07_cell3.png' -> 'P07'; a stem without '_' is its
      own specimen).
    specimen_csv: folder: a sidecar CSV with columns `file`, `specimen`; `file` is the path
      relative to the root ('tumour/a.png') or a bare file name when names are unique.  Every
      image must be listed.  Exclusive with specimen_pattern.
    path_column, label_column, specimen_column, x_column, y_column: csv: column names.  x and y
      are optional; when present every row is a crop centred at (x, y) of the image at `path`.
    pannuke_specimen: 'image' (default): specimen = '<fold>/<image index>', the finest unit the
      release identifies; 'fold': specimen = the fold, so a split by specimen keeps the three
      published folds whole (needs all three folds for train/val/test).
    lizard_specimen: 'image' (default): specimen = the Lizard image name ('consep_1');
      'slide': images cut from the same whole-slide image share a specimen where Lizard's
      info.csv says so (the DigestPath 'dpath_*' sources name their slide), else the image name;
      'fold': specimen = the published Lizard fold (info.csv Split column, 1-3).
    ihc_threshold: ihc_demo: DAB optical-density threshold on a nucleus' mean DAB around it
      (disc of ihc_disc_radius); None = Otsu's threshold over all nuclei's means.  The value
      used is recorded in info['ihc_threshold'].
    ihc_disc_radius: ihc_demo: radius in pixels of the disc around the nucleus centroid whose
      mean DAB decides the class (12 px covers nucleus, cytoplasm and most membranes here).
    ihc_min_area: ihc_demo: smallest nucleus kept, in pixels (smaller blobs are noise).
    ihc_grid: ihc_demo: the image is cut into ihc_grid x ihc_grid tiles; specimen = tile, so a
      split by specimen is a spatial split.
  """
  patch_size: int = 40
  pad_mode: str = "reflect"
  pad_value: int = 0
  resize: bool = False
  skip_bad: bool = False
  scale_16bit: bool = True
  class_names: Optional[list[str]] = None
  specimen_pattern: Optional[str] = None
  specimen_csv: Optional[str] = None
  path_column: str = "path"
  label_column: str = "label"
  specimen_column: str = "specimen"
  x_column: str = "x"
  y_column: str = "y"
  pannuke_specimen: str = "image"
  lizard_specimen: str = "image"
  ihc_threshold: Optional[float] = None
  ihc_disc_radius: int = 12
  ihc_min_area: int = 30
  ihc_grid: int = 4

  def __post_init__(self):
    if int(self.patch_size) != self.patch_size or self.patch_size < 1:
      raise ValueError(f"patch_size must be a positive integer, got {self.patch_size!r}")
    if self.pad_mode not in PAD_MODES:
      raise ValueError(f"pad_mode {self.pad_mode!r} is not one of {', '.join(PAD_MODES)}")
    if not 0 <= self.pad_value <= 255:
      raise ValueError(f"pad_value must be in 0..255, got {self.pad_value!r}")
    if self.pannuke_specimen not in ("image", "fold"):
      raise ValueError(f"pannuke_specimen must be 'image' or 'fold', got {self.pannuke_specimen!r}")
    if self.lizard_specimen not in ("image", "slide", "fold"):
      raise ValueError(
          f"lizard_specimen must be 'image', 'slide' or 'fold', got {self.lizard_specimen!r}")
    if self.class_names is not None:
      names = [nfc(str(c)) for c in self.class_names]
      if not names or len(set(names)) != len(names):
        raise ValueError(f"class_names must be non-empty and unique, got {self.class_names!r}")
      self.class_names = names


def is_ignored_file(name: str) -> bool:
  """Hidden files ('.DS_Store', '._x.png' from macOS) and OS droppings are never data."""
  return name.startswith(".") or name.lower() in IGNORED_FILE_NAMES


def is_image_name(name: str) -> bool:
  return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def nfc(text: str) -> str:
  """Unicode NFC form: macOS file systems hand out NFD names ('é' as e + accent), CSVs are NFC."""
  return unicodedata.normalize("NFC", text)


def _pil_to_rgb(im: Image.Image, path: str, scale_16bit: bool) -> np.ndarray:
  """A decoded PIL image as uint8 RGB (H, W, 3), by the module's colour rules."""
  if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
    arr = np.asarray(im)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
      raise SourceError(f"{path}: 32-bit integer image with values {arr.min()}..{arr.max()}; "
                        "save it as 8-bit RGB")
    if not scale_16bit:
      raise SourceError(f"{path}: 16-bit image refused (scale_16bit=False); save it as 8-bit "
                        "RGB or allow scaling with scale_16bit=True")
    gray = np.floor(arr.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)
  if im.mode == "F":
    raise SourceError(f"{path}: floating-point image (mode F) has no defined 0-255 range; "
                      "save it as 8-bit RGB")
  has_alpha = "A" in im.getbands() or "transparency" in im.info
  if has_alpha:
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
  return np.asarray(im.convert("RGB"))


def load_rgb(path: str, options: Options) -> np.ndarray:
  """Reads an image file as uint8 RGB (H, W, 3); SourceError naming the file if it cannot.

  A file with an image extension that PIL cannot identify or decode (truncated, renamed text)
  is "corrupt".
  """
  if not os.path.isfile(path):
    raise SourceError(f"{path}: file not found")
  try:
    with Image.open(path) as im:
      im.seek(0)
      im.load()
      arr = _pil_to_rgb(im, path, options.scale_16bit)
  except SourceError:
    raise
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
    raise SourceError(f"{path}: corrupt or unreadable image ({type(e).__name__}: {e}); "
                      "re-export or remove the file") from e
  return np.ascontiguousarray(arr, dtype=np.uint8)


def to_patch_size(image: np.ndarray, path: str, options: Options) -> np.ndarray:
  """A whole-patch image at options.patch_size: unchanged, resized (options.resize) or refused."""
  s = options.patch_size
  h, w = image.shape[:2]
  if (h, w) == (s, s):
    return image
  if not options.resize:
    raise SourceError(f"{path}: image is {w}x{h} pixels, expected {s}x{s}; pass resize=True "
                      f"(--resize) to resize it bilinearly, or give the patch size with "
                      f"patch_size (--patch_size)")
  return np.asarray(Image.fromarray(image).resize((s, s), Image.Resampling.BILINEAR))


def centre_pixel(x: float, y: float) -> tuple[int, int]:
  """The pixel (col, row) a crop centred at (x, y) is built around: nearest, halves up."""
  return int(np.floor(x + 0.5)), int(np.floor(y + 0.5))


class Cropper:
  """Cuts options.patch_size crops centred on points of one image, padding where they leave it.

  The padded copy of the image is made once, the first time a crop needs it.
  """

  def __init__(self, image: np.ndarray, options: Options, name: str = "image"):
    self.image = image
    self.size = options.patch_size
    self.pad_mode = options.pad_mode
    self.pad_value = options.pad_value
    self.name = name
    self._padded = None

  def inside(self, x: float, y: float) -> bool:
    cx, cy = centre_pixel(x, y)
    h, w = self.image.shape[:2]
    return 0 <= cx < w and 0 <= cy < h

  def crop(self, x: float, y: float) -> np.ndarray:
    """The crop with pixel (x, y) at [size // 2, size // 2]; SourceError if (x, y) is outside."""
    h, w = self.image.shape[:2]
    if not self.inside(x, y):
      raise SourceError(f"{self.name}: crop centre (x={x}, y={y}) lies outside the {w}x{h} image; "
                        "x is the column and y the row, 0-based, in pixels")
    cx, cy = centre_pixel(x, y)
    x0, y0 = cx - self.size // 2, cy - self.size // 2
    if x0 >= 0 and y0 >= 0 and x0 + self.size <= w and y0 + self.size <= h:
      return np.ascontiguousarray(self.image[y0:y0 + self.size, x0:x0 + self.size])
    if self._padded is None:
      # A margin of `size` covers any crop whose centre is inside the image.
      m = self.size
      kwargs = {"constant_values": self.pad_value} if self.pad_mode == "constant" else {}
      self._padded = np.pad(self.image, ((m, m), (m, m), (0, 0)), mode=self.pad_mode, **kwargs)
    m = self.size
    return np.ascontiguousarray(
        self._padded[y0 + m:y0 + m + self.size, x0 + m:x0 + m + self.size])
