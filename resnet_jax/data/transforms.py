"""Augmentation on the host (PIL and numpy), for the grain pipeline. Output: uint8.

ImageNet-style crops are planned on the image header first (a `Crop`: a box in source pixels and
the flips), then the image is decoded (a JPEG at a reduced scale where the box allows it; with
data.decoder='nvimgcodec', only the region the resize reads, a whole batch of crops in one call,
on the GPU) and only the box is resized: one resample instead of resize-everything-then-crop,
which gives the same pixels. The resample is
PIL's antialiased bilinear filter (support widened by the shrink factor), computed with SIMD by
fast_image_resize (the cykooz-resizer wheel): within 1 of PIL's values in a third of the time.
"""

import dataclasses
import math
import threading
from typing import Sequence

import ml_collections
import numpy as np
from cykooz_resizer import CropBox, FilterType, ResizeAlg, ResizeOptions, Resizer
from PIL import Image

from resnet_jax.data import nvimgcodec_decode
from resnet_jax.data.decode import (BadImageError, Header, JpegHeader, as_array, decode_array,
                                    load_pixels, open_image)

AUGMENTS = ('imagenet_scale', 'inception_crop', 'cifar', 'none')
DECODERS = ('host', 'nvimgcodec')
Box = tuple[float, float, float, float]   # (left, upper, right, lower) in source pixels
_BILINEAR = ResizeAlg.convolution(FilterType.bilinear)
_resizers = threading.local()   # a Resizer keeps scratch buffers: one per thread


def scale_augment_box(width: int, height: int, rng: np.random.Generator, *, size: int,
                      scale_range: tuple[int, int]) -> Box:
  """The paper's scale augmentation: shorter side resized to S ~ U{lo..hi}, a random size^2 crop."""
  shorter = rng.integers(scale_range[0], scale_range[1] + 1)
  side = min(size * min(width, height) / shorter, width, height)   # the crop, in source pixels
  left, upper = rng.uniform(0, width - side), rng.uniform(0, height - side)
  return left, upper, left + side, upper + side


def inception_crop_box(width: int, height: int, rng: np.random.Generator, *,
                       area_range: tuple[float, float] = (0.08, 1.0),
                       ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
                       attempts: int = 10) -> Box:
  """Random-resized crop (Szegedy et al.): a random area fraction and aspect ratio.

  After `attempts` boxes that do not fit, the centre crop at the nearest allowed aspect ratio.
  """
  log_ratio = np.log(ratio_range)
  for _ in range(attempts):
    area = width * height * rng.uniform(*area_range)
    ratio = math.exp(rng.uniform(*log_ratio))
    w, h = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
    if 0 < w <= width and 0 < h <= height:
      left, upper = rng.integers(0, width - w + 1), rng.integers(0, height - h + 1)
      return left, upper, left + w, upper + h
  ratio = width / height
  w, h = width, height
  if ratio < ratio_range[0]:
    h = round(width / ratio_range[0])
  elif ratio > ratio_range[1]:
    w = round(height * ratio_range[1])
  left, upper = (width - w) / 2, (height - h) / 2
  return left, upper, left + w, upper + h


def center_crop_box(width: int, height: int, *, size: int, resize: int = 0) -> Box:
  """Shorter side resized to `resize`, then the centre size^2 crop.

  `resize=0`: no resizing (a plain centre crop, of whole pixels as the device-resident input cuts
  it) unless the image is smaller than `size`, which is then scaled up to it.
  """
  shorter = min(width, height)
  if not resize and shorter >= size:
    left, upper = (width - size) // 2, (height - size) // 2
    return left, upper, left + size, upper + size
  side = size * shorter / (resize or max(size, shorter))
  w, h = min(side, width), min(side, height)
  left, upper = (width - w) / 2, (height - h) / 2
  return left, upper, left + w, upper + h


def crop_resize(image: Header, box: Box, size: int, channels: int, key: str,
                flips: tuple[bool, bool] = (False, False), fast_decode: bool = False) -> np.ndarray:
  """Decodes `image` (opened, not loaded), resizes the `box` region to size x size and applies
  the (horizontal, vertical) `flips`. `fast_decode`: as `decode.load_pixels`'s `fast`."""
  pixels, box = decode_for_box(image, box, size, channels, key, fast_decode)
  return flipped_array(resize_box(pixels, box, size), flips)


Decoded = tuple[Image.Image, Box]   # pixels, and the crop's box in them


def decode_for_box(image: Header, box: Box, size: int, channels: int, key: str,
                   fast: bool = False) -> Decoded:
  """All of `image`, a JPEG at the smallest scale that keeps the box at least size x size, and
  the box in those pixels."""
  width, height = image.size
  shrink = max(1.0, min(box[2] - box[0], box[3] - box[1]) / size)
  pixels = load_pixels(image, channels, key,
                       draft_size=(math.ceil(width / shrink), math.ceil(height / shrink)),
                       fast=fast)
  sx, sy = pixels.width / width, pixels.height / height   # < 1 when JPEG draft scaled down
  return pixels, (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def _region_read(box: Box, width: int, height: int, size: int) -> tuple[int, int, int, int]:
  """The whole-pixel region of a width x height image that the resize of `box` to size x size
  reads: the box and the reach of the antialiased bilinear filter around it (one pixel, times the
  shrink factor where it shrinks)."""
  reach = math.ceil(max(1.0, (box[2] - box[0]) / size, (box[3] - box[1]) / size)) + 1
  return (max(0, math.floor(box[0]) - reach), max(0, math.floor(box[1]) - reach),
          min(width, math.ceil(box[2]) + reach), min(height, math.ceil(box[3]) + reach))


def flipped_array(image: Image.Image, flips: tuple[bool, bool]) -> np.ndarray:
  """uint8 [H, W, C] of `image` with the (horizontal, vertical) `flips` done in PIL (a flipped
  numpy view would make batching slow)."""
  if flips[0]:
    image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  if flips[1]:
    image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
  return as_array(image)


def resize_box(image: Image.Image, box: Box, size: int) -> Image.Image:
  """The `box` region of a loaded 'RGB' or 'L' image resized to size x size, antialiased."""
  if not hasattr(_resizers, 'resizer'):
    _resizers.resizer = Resizer()
  left, upper = max(0.0, box[0]), max(0.0, box[1])
  crop = CropBox(left, upper, min(box[2], image.width) - left, min(box[3], image.height) - upper)
  out = Image.new(image.mode, (size, size))
  _resizers.resizer.resize_pil(image, out, ResizeOptions(_BILINEAR, crop_box=crop))
  return out


def pad_crop(image: np.ndarray, rng: np.random.Generator, *, size: int, pad: int,
             key: str) -> np.ndarray:
  """CIFAR augmentation: zero padding of `pad` pixels, then a random size x size crop; an image
  too small for it is a `BadImageError` naming `key`."""
  h, w, _ = image.shape
  if min(h, w) + 2 * pad < size:
    raise BadImageError(f'{key}: a {h}x{w} image padded by {pad} (data.pad) is smaller than the '
                        f'{size} crop (data.image_size)')
  y, x = rng.integers(0, h + 2 * pad - size + 1), rng.integers(0, w + 2 * pad - size + 1)
  padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
  return padded[y:y + size, x:x + size]


def random_flips(rng: np.random.Generator, *, hflip: bool, vflip: bool) -> tuple[bool, bool]:
  """Whether to flip horizontally and vertically, each with probability 1/2 where enabled."""
  return bool(hflip and rng.random() < 0.5), bool(vflip and rng.random() < 0.5)


def flip(image: np.ndarray, flips: tuple[bool, bool]) -> np.ndarray:
  if flips[0]:
    image = image[:, ::-1]
  if flips[1]:
    image = image[::-1]
  return np.ascontiguousarray(image)


@dataclasses.dataclass(frozen=True)
class Crop:
  """A crop planned on an image's header: its `box` (source pixels) to decode and resize, then
  the (horizontal, vertical) `flips`; `fast`: decode with `data.fast_decode`."""
  header: Header
  box: Box
  flips: tuple[bool, bool]
  key: str
  fast: bool = False


@dataclasses.dataclass(frozen=True)
class ImageTransform:
  """The train augmentation and the eval crop of a config, for images of `channels` channels."""
  augment: str
  size: int
  channels: int
  eval_resize: int = 0
  scale_range: tuple[int, int] = (256, 480)
  pad: int = 4
  hflip: bool = True
  vflip: bool = False
  fast_decode: bool = False   # training crops only; eval decodes exactly
  decoder: str = 'host'       # DECODERS
  nvimgcodec_backends: str = nvimgcodec_decode.DEFAULT_BACKENDS   # with decoder 'nvimgcodec'

  def __post_init__(self):
    if self.augment not in AUGMENTS:
      raise ValueError(f'unknown data.augment {self.augment!r}; valid: {", ".join(AUGMENTS)}')
    if self.decoder not in DECODERS:
      raise ValueError(f'unknown data.decoder {self.decoder!r}; valid: {", ".join(DECODERS)}')
    if self.fast_decode and self.decoder != 'host':
      raise ValueError(f'data.fast_decode is an option of the host decoder, not of '
                       f'data.decoder={self.decoder!r}')
    nvimgcodec_decode.parse_backends(self.nvimgcodec_backends)
    if self.eval_resize and self.eval_resize < self.size:
      raise ValueError(f'data.eval_resize={self.eval_resize} is smaller than '
                       f'data.image_size={self.size}')

  @classmethod
  def from_config(cls, d: ml_collections.ConfigDict, channels: int) -> 'ImageTransform':
    return cls(augment=d.augment, size=d.image_size, channels=channels, eval_resize=d.eval_resize,
               scale_range=tuple(d.scale_range), pad=d.pad, hflip=d.hflip, vflip=d.vflip,
               fast_decode=d.fast_decode, decoder=d.decoder,
               nvimgcodec_backends=d.nvimgcodec_backends)

  def plan_train(self, data: bytes | np.ndarray, key: str,
                 rng: np.random.Generator) -> Crop | np.ndarray:
    """One image's train augmentation: its `Crop` (ImageNet-style and 'none'), or the finished
    uint8 image ('cifar', whose random crop is cut from the decoded image)."""
    if self.augment == 'none':
      return self.plan_eval(data, key)
    if self.augment == 'cifar':
      image = pad_crop(decode_array(data, self.channels, key), rng, size=self.size, pad=self.pad,
                       key=key)
      return flip(image, random_flips(rng, hflip=self.hflip, vflip=self.vflip))
    header = open_image(data, key)
    return Crop(header, self.train_box(*header.size, rng),
                random_flips(rng, hflip=self.hflip, vflip=self.vflip), key, self.fast_decode)

  def train_box(self, width: int, height: int, rng: np.random.Generator) -> Box:
    """The random crop of the 'imagenet_scale' or 'inception_crop' augmentation."""
    if self.augment == 'imagenet_scale':
      return scale_augment_box(width, height, rng, size=self.size, scale_range=self.scale_range)
    return inception_crop_box(width, height, rng)

  def plan_eval(self, data: bytes | np.ndarray, key: str) -> Crop:
    header = open_image(data, key)
    return Crop(header, center_crop_box(*header.size, size=self.size, resize=self.eval_resize),
                (False, False), key)

  def decode_regions(self, crops: Sequence[Crop]) -> list[Decoded | None]:
    """With data.decoder='nvimgcodec', the region that each RGB or grey JPEG crop's resize reads,
    decoded at full scale, all in one call (one batch on the GPU); None for the crops that the
    host decoder is to decode (every crop with 'host'; other images; JPEGs nvImageCodec cannot
    decode, for the host decoder's verdict)."""
    decoded: list[Decoded | None] = [None] * len(crops)
    if self.decoder != 'nvimgcodec' or self.channels != 3:
      return decoded
    jpegs = [(i, _region_read(c.box, *c.header.size, self.size))
             for i, c in enumerate(crops) if isinstance(c.header, JpegHeader)]
    regions = nvimgcodec_decode.decode_regions(
        [(crops[i].header.data, r) for i, r in jpegs],
        nvimgcodec_decode.parse_backends(self.nvimgcodec_backends))
    for (i, (left, upper, _, _)), pixels in zip(jpegs, regions):
      if pixels is not None:
        b = crops[i].box
        decoded[i] = Image.fromarray(pixels), (b[0] - left, b[1] - upper, b[2] - left, b[3] - upper)
    return decoded

  def render(self, crop: Crop, decoded: Decoded | None = None) -> np.ndarray:
    """uint8 [size, size, C]: `crop` resized from its `decoded` region (else decoded by the host
    decoder, which raises `BadImageError` naming a bad file) and flipped."""
    pixels, box = decoded or decode_for_box(crop.header, crop.box, self.size, self.channels,
                                            crop.key, crop.fast)
    return flipped_array(resize_box(pixels, box, self.size), crop.flips)

  def finish(self, planned: Crop | np.ndarray) -> np.ndarray:
    """One planned image on its own (a batch of one): the uint8 image."""
    if isinstance(planned, np.ndarray):
      return planned
    return self.render(planned, self.decode_regions([planned])[0])

  def train(self, data: bytes | np.ndarray, key: str, rng: np.random.Generator) -> np.ndarray:
    return self.finish(self.plan_train(data, key, rng))

  def eval(self, data: bytes | np.ndarray, key: str) -> np.ndarray:
    return self.finish(self.plan_eval(data, key))
