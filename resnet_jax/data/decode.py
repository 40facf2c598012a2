"""Image decoding: any file (or array) to 'RGB' or single-channel 'L' pixels.

Grayscale, CMYK, palette (with or without transparency), alpha (RGBA, LA) and 16-bit images all
come out as 8-bit RGB, or as 8-bit grey for single-channel datasets (MNIST). Every failure is a
`BadImageError` naming the record.

PIL reads and decodes everything, except the common case of the input pipeline: a YCbCr or grey
JPEG, whose header simplejpeg reads (in microseconds, against PIL's 70 us) and which it decodes
(the same libjpeg-turbo, the same pixels, straight into an array: about 25% less time per 500x375
photo than PIL's decoder). Anything simplejpeg rejects goes to PIL, whose verdict and message a
bad file gets.
"""

import dataclasses
import io
import math

import numpy as np
import simplejpeg
from PIL import Image

_MODE = {1: 'L', 3: 'RGB'}
_SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')
_SIMPLEJPEG_MODES = {'YCbCr': 'RGB', 'Gray': 'L'}   # its colour space -> PIL's decoded mode


class BadImageError(ValueError):
  """An image that cannot be decoded; the message names its record (file)."""


@dataclasses.dataclass(frozen=True)
class JpegHeader:
  """A YCbCr or grey JPEG with its header read by simplejpeg: `size` and `mode` as PIL's."""
  data: bytes
  size: tuple[int, int]
  mode: str
  format = 'JPEG'


Header = Image.Image | JpegHeader


def open_image(data: bytes | np.ndarray, key: str) -> Header:
  """The image with only its header read (size and format known, pixels not decoded yet)."""
  if isinstance(data, bytes) and data[:2] == b'\xff\xd8':
    try:
      height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
      if colorspace in _SIMPLEJPEG_MODES:
        return JpegHeader(data, (width, height), _SIMPLEJPEG_MODES[colorspace])
    except ValueError:
      pass   # PIL gives the verdict
  return _pil_open(data, key)


def _pil_open(data: bytes | np.ndarray, key: str) -> Image.Image:
  try:
    if isinstance(data, np.ndarray):
      return Image.fromarray(data[..., 0] if data.ndim == 3 and data.shape[-1] == 1 else data)
    return Image.open(io.BytesIO(data))
  except Exception as e:  # PIL raises many types for bad files; all mean the same here.
    raise BadImageError(f'{key}: not a readable image ({type(e).__name__}: {e})') from e


def load_pixels(image: Header, channels: int, key: str,
                draft_size: tuple[int, int] | None = None, fast: bool = False) -> Image.Image:
  """Decodes `image` into mode 'RGB' (channels=3) or 'L' (channels=1).

  `draft_size`: the smallest size still needed; a JPEG is then decoded at 1/2, 1/4 or 1/8 scale
  where that is still at least this size, which saves most of the decoding of large photos.
  `fast`: libjpeg-turbo's fast integer IDCT and plain chroma upsampling for the JPEGs simplejpeg
  decodes (about 15% less decoding time, pixels off by a few levels): for training augmentation.
  """
  mode = _MODE[channels]
  if isinstance(image, JpegHeader):
    pixels = _simplejpeg_pixels(image, mode, draft_size, fast)
    if pixels is not None:
      return pixels
    image = _pil_open(image.data, key)   # PIL gives the verdict
  try:
    if draft_size is not None and image.format == 'JPEG':
      image.draft(mode, draft_size)
    image.load()
    return _convert(image, mode)
  except Exception as e:  # truncated data, broken streams, unsupported modes...
    raise BadImageError(f'{key}: cannot decode the image ({type(e).__name__}: {e})') from e


def _simplejpeg_pixels(image: JpegHeader, mode: str, draft_size: tuple[int, int] | None,
                       fast: bool) -> Image.Image | None:
  """`image` decoded by simplejpeg at PIL's draft scale; None if it fails or if PIL would convert
  it differently (grey out of colour)."""
  if mode == 'L' and image.mode != 'L':
    return None
  width, height = image.size
  scale = 1   # as PIL's draft: the largest power of two that keeps draft_size
  if draft_size is not None:
    fit = min(width // draft_size[0], height // draft_size[1])
    scale = next(s for s in (8, 4, 2, 1) if fit >= s)
  try:
    pixels = simplejpeg.decode_jpeg(
        image.data, colorspace='GRAY' if mode == 'L' else 'RGB', fastdct=fast, fastupsample=fast,
        min_factor=scale,
        min_width=math.ceil(width / scale), min_height=math.ceil(height / scale))
  except ValueError:
    return None
  return Image.fromarray(pixels[..., 0] if mode == 'L' else pixels)


def decode_array(data: bytes | np.ndarray, channels: int, key: str) -> np.ndarray:
  """The whole image as uint8 [H, W, channels]."""
  if (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 3
      and data.shape[-1] == channels):
    return data
  return as_array(load_pixels(open_image(data, key), channels, key))


def as_array(image: Image.Image) -> np.ndarray:
  """uint8 [H, W, C] (C = 1 for 'L')."""
  array = np.asarray(image, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def _convert(image: Image.Image, mode: str) -> Image.Image:
  if image.mode == mode:
    return image
  if image.mode in _SIXTEEN_BIT_MODES:   # PIL's convert would clip, not rescale, 16-bit values
    image = Image.fromarray((np.asarray(image).astype(np.int64).clip(0, 65535) >> 8)
                            .astype(np.uint8))
  elif image.mode in ('P', 'PA'):        # palette, maybe with a transparent colour
    image = image.convert('RGBA')
  return image.convert(mode)
