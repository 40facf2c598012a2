"""JPEG crops decoded by NVIDIA's nvImageCodec (`data.decoder='nvimgcodec'`): only the region
a crop needs, on the GPU where one is visible (nvJPEG: the hardware JPEG engines of A100/H100-class
GPUs, else CUDA kernels), else on the CPU (libjpeg-turbo: the host decoder's pixels wherever
that one decodes at full scale). Each process uses the first GPU it sees.

On the GPU the host's cores are left with reading records, resizing and batching, which is what
the ImageNet-style pipeline needs to keep pace with a ResNet-50 step (docs/benchmarks.md: JPEG
decoding is about 70% of its host work per image). Each process (each grain worker) makes its
own decoder, on its first batch, and decodes each batch's crops in one call.

Install: `pip install -e ".[nvimgcodec]"` (nvidia-nvimgcodec-cu13 and nvidia-nvjpeg).
"""

import os
import threading
from typing import Sequence

import numpy as np
from absl import logging

Region = tuple[int, int, int, int]   # (left, upper, right, lower), integer pixels
_local = threading.local()   # a decoder per thread


def _make_decoder():
  os.environ.setdefault('PYNVIMGCODEC_VERBOSITY', '0')   # failures are handled by the caller
  try:
    from nvidia import nvimgcodec
  except ImportError as e:
    raise ImportError("data.decoder='nvimgcodec' needs NVIDIA's nvImageCodec: "
                      'pip install -e ".[nvimgcodec]" (nvidia-nvimgcodec-cu13, nvidia-nvjpeg)') from e
  kinds = nvimgcodec.BackendKind
  try:
    decoder = nvimgcodec.Decoder(max_num_cpu_threads=1, backends=[
        nvimgcodec.Backend(kinds.HW_GPU_ONLY), nvimgcodec.Backend(kinds.GPU_ONLY),
        nvimgcodec.Backend(kinds.CPU_ONLY)])
    where = 'the GPU (hardware decoder or CUDA where nvJPEG loads; else the CPU)'
  except RuntimeError:   # no usable CUDA device
    decoder = nvimgcodec.Decoder(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY,
                                 max_num_cpu_threads=1,
                                 backends=[nvimgcodec.Backend(kinds.CPU_ONLY)])
    where = 'the CPU'
  logging.info('nvImageCodec %s decodes JPEG crops on %s (process %d)',
               getattr(nvimgcodec, '__version__', '?'), where, os.getpid())
  params = nvimgcodec.DecodeParams(apply_exif_orientation=False,
                                   color_spec=nvimgcodec.ColorSpec.SRGB)
  return nvimgcodec, decoder, params


def decode_regions(items: Sequence[tuple[bytes, Region]]) -> list[np.ndarray | None]:
  """uint8 RGB [lower - upper, right - left, 3] of each (JPEG, region), grey JPEGs too, decoded in
  one call (one batch for nvJPEG, whose hardware engines decode batches); None where nvImageCodec
  cannot decode the image (the host decoder then gives the verdict).

  Only the rows down to each region's end are read: damage below it goes unnoticed, where the
  host decoder, which decodes every image whole, would call the file bad.
  """
  if not items:
    return []
  if not hasattr(_local, 'decoder'):
    _local.decoder = _make_decoder()
  nvimgcodec, decoder, params = _local.decoder
  streams = [nvimgcodec.CodeStream(data).get_sub_code_stream(
                 region=nvimgcodec.Region(upper, left, lower, right))
             for data, (left, upper, right, lower) in items]
  return [None if image is None else np.asarray(image.cpu())
          for image in decoder.decode(streams, params=params)]
