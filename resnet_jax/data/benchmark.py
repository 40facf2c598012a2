"""Images/s of the ImageNet-style training pipeline: decode, scale augmentation, crop, flip.

    python -m resnet_jax.data.benchmark [--folder DIR] [--generate N] [--workers K]
        [--batch-size B] [--steps S] [--augment imagenet_scale|inception_crop]

Reads a prepared dataset (DIR with dataset.json), or an image folder ROOT/train/<class>/ that it
prepares first, or (no --folder) N generated JPEGs of ImageNet-like size (500x375, quality 90).
Measures (1) one core: the work of whole batches in this thread, no grain, the time of each
of its stages (with --decoder nvimgcodec also a whole batch decoded in one call, the way the
pipeline decodes); (2) the grain pipeline with K worker processes producing uint8 batches
[B, 224, 224, 3], after warm-up batches. Prints a summary and one JSON line.
"""

import argparse
import collections
import io
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import grain
import numpy as np
import PIL
from PIL import Image

from resnet_jax.data import folder_format, grain_loader, nvimgcodec_decode
from resnet_jax.data.decode import open_image
from resnet_jax.data.folder_source import load_folder_split
from resnet_jax.data.prepare import prepare
from resnet_jax.data.transforms import (DECODERS, Crop, ImageTransform, decode_for_box,
                                        flipped_array, random_flips, resize_box)


def generate_jpegs(root: Path, num_images: int, *, size: tuple[int, int] = (500, 375),
                   quality: int = 90, num_classes: int = 10, seed: int = 0) -> Path:
  """ROOT/train/class_k/*.jpg: smooth random scenes plus noise, so JPEG sizes are photo-like."""
  rng = np.random.default_rng(seed)
  for i in range(num_images):
    directory = root / 'train' / f'class_{i % num_classes}'
    directory.mkdir(parents=True, exist_ok=True)
    coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    scene = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC), np.float32)
    noisy = np.clip(scene + rng.normal(0, 12, scene.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(directory / f'{i:06d}.jpg', quality=quality)
  return root


def one_core_rate(load: grain_loader.LoadExample, num_examples: int, batch_size: int) -> float:
  """Examples/s of the per-example planning and the per-batch decoding and resizing, in this
  thread (CPU time: one core's throughput)."""
  rng = np.random.default_rng(0)
  start = time.process_time()
  for first in range(0, num_examples, batch_size):
    load.collate([load(i % len(load.records), rng)
                  for i in range(first, min(first + batch_size, num_examples))])
  return num_examples / (time.process_time() - start)


def stage_times(load: grain_loader.LoadExample, num_examples: int) -> dict[str, float]:
  """Wall-clock ms per example of each stage of the train transform, in this thread (each crop
  decoded on its own: with nvImageCodec on a GPU, a batch of one)."""
  t = load.transform
  rng = np.random.default_rng(0)
  totals = collections.Counter()
  clock = 0.0

  def lap(stage: str) -> None:
    nonlocal clock
    now = time.perf_counter()
    totals[stage] += now - clock
    clock = now

  arrays = []
  for i in range(num_examples):
    clock = time.perf_counter()
    record = load.records[i % len(load.records)]
    lap('read record')
    header = open_image(record['image'], record['key'])
    lap('read header')
    crop = Crop(header, t.train_box(*header.size, rng),
                random_flips(rng, hflip=t.hflip, vflip=t.vflip), record['key'], t.fast_decode)
    lap('plan crop')
    pixels, box = t.decode_regions([crop])[0] or decode_for_box(
        header, crop.box, t.size, t.channels, crop.key, crop.fast)
    lap('decode')
    image = resize_box(pixels, box, t.size)
    lap('resize')
    arrays.append(flipped_array(image, crop.flips))
    lap('flip, to array')
  start = time.perf_counter()
  np.stack(arrays)
  totals['stack batch'] = time.perf_counter() - start
  return {stage: seconds / num_examples * 1e3 for stage, seconds in totals.items()}


def batch_decode(load: grain_loader.LoadExample, batch_size: int,
                 repeats: int = 3) -> tuple[float, int]:
  """(wall-clock ms per image, crops decoded) of one batch's crops decoded in one
  `decode_regions` call: the nvImageCodec decoder's unit of work (best of `repeats`, after one
  untimed call). Crops it leaves to the host decoder count in the time but not as decoded."""
  rng = np.random.default_rng(1)
  crops = [load(i % len(load.records), rng).image for i in range(batch_size)]
  decoded = sum(d is not None for d in load.transform.decode_regions(crops))   # and set-up
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    load.transform.decode_regions(crops)
    best = min(best, time.perf_counter() - start)
  return best / batch_size * 1e3, decoded


def pipeline_rate(load: grain_loader.LoadExample, *, workers: int, batch_size: int, steps: int,
                  warmup: int) -> float:
  """Images/s of the grain train pipeline over `steps` batches after `warmup` (>= 1) batches.

  Only the overall rate means something: with workers, single batches arrive in bursts (a
  worker's finished batches wait in its buffer), so per-batch rates are not reported.
  """
  ds, _ = grain_loader.train_dataset(load, seed=0, batch_size=batch_size, process_index=0,
                                     process_count=1)
  it = grain_loader.host_batches(ds, num_workers=workers)
  try:
    for _ in range(warmup):
      batch = next(it)
    assert batch['image'].shape == (batch_size, load.transform.size, load.transform.size, 3)
    start = time.perf_counter()
    for _ in range(steps):
      next(it)
    seconds = time.perf_counter() - start
  finally:
    it.close()
  return batch_size * steps / seconds


def run(folder: str | None, *, generate: int, workers: int, batch_size: int, steps: int,
        warmup: int, augment: str, image_size: int, fast_decode: bool = False,
        decoder: str = 'host',
        nvimgcodec_backends: str = nvimgcodec_decode.DEFAULT_BACKENDS) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    if folder and (Path(folder) / folder_format.METADATA_FILE).is_file():
      prepared = Path(folder)
    else:
      root = Path(folder) if folder else generate_jpegs(Path(tmp) / 'images', generate)
      prepared = Path(tmp) / 'prepared'
      prepare(root, prepared, val_fraction=0.0, workers=os.cpu_count() or 1)
    split = load_folder_split('train', str(prepared))
    transform = ImageTransform(augment=augment, size=image_size, channels=3,
                               fast_decode=fast_decode, decoder=decoder,
                               nvimgcodec_backends=nvimgcodec_backends)
    load = grain_loader.LoadExample(split.records, transform, train=True, skip_bad_images=False)
    sample = [split.records[i]['image'] for i in range(min(len(split), 200))]
    sizes = [Image.open(io.BytesIO(b)).size for b in sample]
    one_core = one_core_rate(load, min(len(split), 500), batch_size)
    stages = stage_times(load, min(len(split), 200))
    per_batch = batch_decode(load, batch_size) if decoder == 'nvimgcodec' else None
    rate = pipeline_rate(load, workers=workers, batch_size=batch_size, steps=steps,
                         warmup=warmup)
  return {
      'images_per_sec': rate,
      'images_per_sec_one_core': one_core,
      'stage_ms': stages,
      # nvimgcodec: ms per image of a whole batch decoded in one call, and how many it decoded
      'batch_decode_ms': per_batch[0] if per_batch else None,
      'batch_decoded': per_batch[1] if per_batch else None,
      'workers': workers, 'batch_size': batch_size, 'steps': steps, 'warmup': warmup,
      'augment': augment, 'fast_decode': fast_decode, 'decoder': decoder,
      'nvimgcodec_backends': nvimgcodec_backends if decoder == 'nvimgcodec' else None,
      'image_size': image_size, 'num_images': len(split),
      'mean_source_size': [round(float(np.mean([s[0] for s in sizes]))),
                           round(float(np.mean([s[1] for s in sizes])))],
      'mean_file_kb': float(np.mean([len(b) for b in sample]) / 1024),
      'cpu_count': os.cpu_count(), 'cpu': platform.processor() or platform.machine(),
      'python': platform.python_version(), 'pillow': PIL.__version__,
      'grain': getattr(grain, '__version__', 'unknown'),
  }


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(prog='python -m resnet_jax.data.benchmark', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--folder', help='prepared dataset DIR, or image folder ROOT to prepare first')
  p.add_argument('--generate', type=int, default=512, help='JPEGs to generate without --folder')
  p.add_argument('--workers', type=int, default=1, help='grain worker processes (0: in-process)')
  p.add_argument('--batch-size', type=int, default=64)
  p.add_argument('--steps', type=int, default=20,
                 help='timed batches; a multiple of --workers, who deliver batches in rounds')
  p.add_argument('--warmup', type=int,
                 help='untimed batches (worker start-up); default: whole rounds, at least 3')
  p.add_argument('--augment', default='imagenet_scale', choices=('imagenet_scale',
                                                                  'inception_crop'))
  p.add_argument('--image-size', type=int, default=224)
  p.add_argument('--fast-decode', action='store_true',
                 help="libjpeg-turbo's fast IDCT and upsampling (data.fast_decode=True)")
  p.add_argument('--decoder', default='host', choices=DECODERS, help='data.decoder')
  p.add_argument('--nvimgcodec-backends', default=nvimgcodec_decode.DEFAULT_BACKENDS,
                 help="data.nvimgcodec_backends, e.g. 'cuda,cpu' (no hardware JPEG engines)")
  args = p.parse_args(argv)
  if args.warmup is not None and args.warmup < 1:
    p.error(f'--warmup={args.warmup}: at least 1 untimed batch (the first starts the pipeline)')
  round_size = max(args.workers, 1)
  warmup = args.warmup if args.warmup is not None else -(-3 // round_size) * round_size
  r = run(args.folder, generate=args.generate, workers=args.workers, batch_size=args.batch_size,
          steps=args.steps, warmup=warmup, augment=args.augment, image_size=args.image_size,
          fast_decode=args.fast_decode, decoder=args.decoder,
          nvimgcodec_backends=args.nvimgcodec_backends)
  stages = ', '.join(f'{name} {ms:.3f}' for name, ms in r['stage_ms'].items())
  decode = (f"nvimgcodec {r['nvimgcodec_backends']}" if r['decoder'] == 'nvimgcodec' else
            f"host, {'fast' if r['fast_decode'] else 'exact'}")
  lines = [f"{r['augment']} ({decode} decode) -> uint8 {r['image_size']}x{r['image_size']}, "
           f"batch {r['batch_size']}, {r['num_images']} JPEGs of about "
           f"{r['mean_source_size'][0]}x{r['mean_source_size'][1]} ({r['mean_file_kb']:.0f} KiB)",
           f"  one core (this thread, no grain): {r['images_per_sec_one_core']:,.0f} images/s",
           f"  ms per image, by stage (this thread): {stages}"]
  if r['batch_decode_ms'] is not None:
    lines.append(f"  nvImageCodec, a batch in one call: {r['batch_decode_ms']:.3f} ms per image, "
                 f"{r['batch_decoded']} of {r['batch_size']} crops decoded by it")
  lines += [f"  grain, {r['workers']} worker(s): {r['images_per_sec']:,.0f} images/s "
            f"on {r['cpu_count']} CPUs",
            f"  python {r['python']}, pillow {r['pillow']}, grain {r['grain']}"]
  print('\n'.join(lines))
  print(json.dumps(r))


if __name__ == '__main__':
  main()
