"""JPEG crops decoded by NVIDIA's nvImageCodec (`data.decoder='nvimgcodec'`): only the region
a crop needs, on the GPU where one is visible (nvJPEG: the hardware JPEG engines of A100/H100-class
GPUs; CUDA kernels where listed), else on the CPU (libjpeg-turbo: the host decoder's pixels
wherever that one decodes at full scale). `data.nvimgcodec_backends` picks the chain (default
'hw,cpu'; e.g. 'hw,cuda,cpu' to share each batch with CUDA), for measuring each.

On the GPU the host's cores are left with reading records, resizing and batching, which is what
the ImageNet-style pipeline needs to keep pace with a ResNet-50 step (docs/benchmarks.md: JPEG
decoding is about 70% of its host work per image). Each process (each grain worker) makes its
own decoder, on its first batch, and decodes each batch's crops in one call; grain workers are
dealt out over the trainer's GPUs (`use_gpu`), the trainer itself decodes on its current one.

Install: `pip install -e ".[nvimgcodec]"` (nvidia-nvimgcodec-cu13 and nvidia-nvjpeg)."""

import os
import threading
from typing import Sequence

import numpy as np
from absl import logging

Region = tuple[int, int, int, int]   # (left, upper, right, lower), integer pixels
BACKENDS = ('hw', 'cuda', 'cpu')   # data.nvimgcodec_backends: the names, in the chain's order
# The hardware engines, the CPU where they cannot decode: on an H200 (2026-12-05) 12,653 images/s
# from 16 grain workers against 9,856 with CUDA in the chain, whose decoder nvImageCodec 0.9
# could not make there (docs/benchmarks.md).
DEFAULT_BACKENDS = 'hw,cpu'
# Share of each batch for the hardware engines when CUDA decodes too (both busy at once): the
# default of DALI's nvImageCodec-based decoders; not tuned here.
HW_LOAD = 0.9
# nvJPEG's CUDA decoder does the Huffman decoding on the host for images under 1M pixels (most
# photos), which would put it back on the cores the GPU decoding is to spare: on the GPU for all.
OPTIONS = 'nvjpeg_cuda_decoder:hybrid_huffman_threshold=0'
_local = threading.local()   # decoders per thread, by backends
_gpu: int | None = None      # this process's GPU (`use_gpu`); None: the current device


def parse_backends(spec: str) -> tuple[str, ...]:
  """'cpu,cuda' -> ('cuda', 'cpu'): the subset, in the chain's order; a clear error for an
  unknown name or an empty list."""
  names = {n.strip() for n in spec.split(',') if n.strip()}
  unknown = sorted(names - set(BACKENDS))
  if unknown or not names:
    raise ValueError(f'data.nvimgcodec_backends={spec!r}: '
                     f'{"unknown " + ", ".join(unknown) if unknown else "empty"}; '
                     f'a comma-separated subset of {DEFAULT_BACKENDS}')
  return tuple(b for b in BACKENDS if b in names)


def use_gpu(worker_index: int, worker_count: int, *, gpus: Sequence[int]) -> None:
  """grain's `worker_init_fn`: worker i decodes on `gpus[i % len(gpus)]`, so that the workers
  of a multi-GPU process share out its GPUs' JPEG engines and memory (one CUDA context each)
  instead of all crowding the first."""
  del worker_count
  global _gpu
  _gpu = gpus[worker_index % len(gpus)] if gpus else None


def _make_decoder(backends: tuple[str, ...]):
  os.environ.setdefault('PYNVIMGCODEC_VERBOSITY', '0')   # failures are handled by the caller
  try:
    from nvidia import nvimgcodec
  except ImportError as e:
    raise ImportError("data.decoder='nvimgcodec' needs NVIDIA's nvImageCodec: "
                      'pip install -e ".[nvimgcodec]" (nvidia-nvimgcodec-cu13, nvidia-nvjpeg)') from e
  kinds = {'hw': nvimgcodec.BackendKind.HW_GPU_ONLY, 'cuda': nvimgcodec.BackendKind.GPU_ONLY,
           'cpu': nvimgcodec.BackendKind.CPU_ONLY}
  hw_load = HW_LOAD if 'cuda' in backends else 1.0
  chain = [nvimgcodec.Backend(kinds[b], load_hint=hw_load if b == 'hw' else 1.0)
           for b in backends]
  cpu_only = dict(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=1,
                  backends=[nvimgcodec.Backend(kinds['cpu'])])
  if backends == ('cpu',):
    decoder, where = nvimgcodec.Decoder(**cpu_only), 'the CPU'
  else:
    try:
      decoder = nvimgcodec.Decoder(device_id=-1 if _gpu is None else _gpu,
                                   max_num_cpu_threads=1, backends=chain, options=OPTIONS)
      where = f'{"the current GPU" if _gpu is None else f"GPU {_gpu}"} ({", ".join(backends)})'
    except RuntimeError as e:   # no usable CUDA device
      if 'cpu' not in backends:
        raise RuntimeError(f'nvImageCodec could not make a decoder for data.nvimgcodec_backends='
                           f'{",".join(backends)}: no usable GPU, or a decoder this build lacks '
                           f'(add cpu to fall back to the CPU): {e}') from e
      decoder, where = nvimgcodec.Decoder(**cpu_only), 'the CPU (no GPU decoder could be made)'
  logging.info('nvImageCodec %s decodes JPEG crops on %s (process %d)',
               getattr(nvimgcodec, '__version__', '?'), where, os.getpid())
  params = nvimgcodec.DecodeParams(apply_exif_orientation=False,
                                   color_spec=nvimgcodec.ColorSpec.SRGB)
  return nvimgcodec, decoder, params


def decode_regions(items: Sequence[tuple[bytes, Region]],
                   backends: tuple[str, ...]) -> list[np.ndarray | None]:
  """uint8 RGB [lower - upper, right - left, 3] of each (JPEG, region), grey JPEGs too, decoded in
  one call (one batch for nvJPEG, whose hardware engines decode batches); None where nvImageCodec
  cannot decode the image (the host decoder then gives the verdict).

  Only the rows down to each region's end are read: damage below it goes unnoticed, where the
  host decoder, which decodes every image whole, would call the file bad.
  """
  if not items:
    return []
  decoders = _local.__dict__.setdefault('decoders', {})
  if backends not in decoders:
    decoders[backends] = _make_decoder(backends)
  nvimgcodec, decoder, params = decoders[backends]
  streams = [nvimgcodec.CodeStream(data).get_sub_code_stream(
                 region=nvimgcodec.Region(upper, left, lower, right))
             for data, (left, upper, right, lower) in items]
  return [None if image is None else np.asarray(image.cpu())
          for image in decoder.decode(streams, params=params)]
