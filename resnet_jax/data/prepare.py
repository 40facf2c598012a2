"""Converts a folder of class subfolders into ArrayRecord files that the `folder` source reads.

    python -m resnet_jax.data.prepare --image-folder ROOT --out DIR [--val-fraction 0.1]
        [--image-size-max N] [--skip-bad-images] [--workers K]

ROOT/train/<class>/*.jpg|png|... (subfolders allowed) and optionally ROOT/val/<class>/..., or just
ROOT/<class>/...; without ROOT/val, a deterministic `--val-fraction` of each class (chosen by a hash
of the file paths) becomes the 'val' split. Every image is decoded once here (in `--workers`
processes), so training only ever sees images that decode; a bad file stops the conversion, naming
it, or with `--skip-bad-images` is left out, logged and listed in DIR/dataset.json. The files are
stored as they are (no re-encoding) unless `--image-size-max` shrinks those whose shorter side is
larger.
No TensorFlow needed.
"""

import argparse
import contextlib
import hashlib
import io
import multiprocessing
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging
from array_record.python.array_record_module import ArrayRecordWriter
from PIL import Image

from resnet_jax.data import folder_format
from resnet_jax.data.decode import BadImageError, Header, load_pixels, open_image

IMAGE_EXTENSIONS = frozenset({'.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp',
                              '.ppm', '.pgm', '.pbm'})
Item = tuple[Path, int]   # (image file, label)


def scan_classes(split_dir: Path) -> dict[str, list[Path]]:
  """Class name -> its image files (sorted), for each subfolder of `split_dir`."""
  if not split_dir.is_dir():
    raise FileNotFoundError(f'{split_dir} does not exist or is not a directory')
  classes = {}
  for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
    files = sorted(p for p in class_dir.rglob('*')
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
      raise ValueError(f'class folder {class_dir} has no image files (extensions: '
                       f'{", ".join(sorted(IMAGE_EXTENSIONS))}); remove it or add images')
    classes[folder_format.text(class_dir.name)] = files
  if not classes:
    raise ValueError(f'{split_dir} has no class subfolders (expected {split_dir}/<class>/*.jpg)')
  return classes


def pick_val(files: list[Path], root: Path, fraction: float) -> set[Path]:
  """round(fraction * n) files of one class, those with the smallest hash of their ROOT path.

  Deterministic for a given set of files; adding files can move others between val and train,
  so compare models only on one preparation. Every class keeps at least one image for train, and
  one of two or more images gives at least one to val.
  """
  n = len(files)
  k = min(round(fraction * n), max(n - 1, 0))
  if fraction > 0 and n > 1:
    k = max(k, 1)
  by_hash = sorted(files, key=lambda f: hashlib.sha1(os.fsencode(f.relative_to(root))).digest())
  return set(by_hash[:k])


def plan_splits(root: Path, val_fraction: float) -> tuple[list[str], dict[str, list[Item]]]:
  """Class names and the (file, label) items of 'train' and (if any) 'val', from
  ROOT/train/<class>/ (and ROOT/val/<class>/) or from ROOT/<class>/ (val then split off by
  `val_fraction`)."""
  if not root.is_dir():
    raise FileNotFoundError(f'image folder {root} does not exist')
  has_val = (root / 'val').is_dir()
  if has_val and not (root / 'train').is_dir():
    raise FileNotFoundError(f'{root / "train"} does not exist (ROOT has val/ but no train/)')
  train = scan_classes(root / 'train' if (root / 'train').is_dir() else root)
  class_names = list(train)
  label = {name: i for i, name in enumerate(class_names)}
  splits: dict[str, list[Item]] = {'train': [], 'val': []}
  if has_val:
    val = scan_classes(root / 'val')
    unknown = sorted(set(val) - set(train))
    if unknown:
      raise ValueError(f'{root / "val"} has classes that {root / "train"} lacks: {unknown}')
    splits['train'] = [(f, label[c]) for c, files in train.items() for f in files]
    splits['val'] = [(f, label[c]) for c, files in val.items() for f in files]
  else:
    for c, files in train.items():
      val = pick_val(files, root, val_fraction)
      for f in files:
        splits['val' if f in val else 'train'].append((f, label[c]))
  if not splits['val']:
    del splits['val']
  return class_names, splits


def shrink(image: Header, image_size_max: int, key: str) -> bytes:
  """Re-encodes `image` with its shorter side reduced to `image_size_max` (JPEG stays JPEG)."""
  width, height = image.size
  scale = image_size_max / min(width, height)
  size = (max(1, round(width * scale)), max(1, round(height * scale)))
  pixels = load_pixels(image, 3, key, draft_size=size).resize(size, Image.BILINEAR)
  buffer = io.BytesIO()
  if image.format == 'JPEG':
    pixels.save(buffer, format='JPEG', quality=95)
  else:
    pixels.save(buffer, format='PNG')
  return buffer.getvalue()


def encode_file(path: Path, image_size_max: int = 0) -> tuple[bytes | None, str | None]:
  """The record image bytes of one file after a full decode, or None and the reason it is bad."""
  try:
    data = path.read_bytes()
    image = open_image(data, str(path))
    if image_size_max and min(image.size) > image_size_max:
      return shrink(image, image_size_max, str(path)), None
    load_pixels(image, 3, str(path))
    return data, None
  except (BadImageError, OSError) as e:
    return None, str(e)


def _encode_item(args: tuple[Item, int]) -> tuple[Item, bytes | None, str | None]:
  item, image_size_max = args
  return (item, *encode_file(item[0], image_size_max))


def write_split(out: Path, split: str, items: list[Item], root: Path, class_names: list[str], *,
                image_size_max: int, skip_bad_images: bool, pool) -> dict[str, Any]:
  """Writes DIR/<split>.array_record in a fixed shuffled order; returns its metadata."""
  order = np.random.default_rng(0).permutation(len(items))
  jobs = ((items[i], image_size_max) for i in order)
  results = pool.imap(_encode_item, jobs, chunksize=16) if pool else map(_encode_item, jobs)
  path = out / folder_format.split_file(split)
  tmp = path.with_suffix('.tmp')
  counts, skipped = Counter(), []
  try:
    with contextlib.closing(ArrayRecordWriter(str(tmp), 'group_size:1')) as writer:
      for (file, label), data, error in results:
        if data is None:
          if not skip_bad_images:
            raise BadImageError(f'{error}\n(use --skip-bad-images to leave such files out)')
          logging.warning('skipped a bad image: %s', error)
          skipped.append({'file': str(file), 'error': error})
          continue
        writer.write(folder_format.encode_record(label, str(file.relative_to(root)), data))
        counts[class_names[label]] += 1
    if not counts:
      raise ValueError(f'no image of split {split!r} could be decoded')
  except BaseException:
    tmp.unlink(missing_ok=True)   # no half-written split left in the output folder
    raise
  os.replace(tmp, path)
  num_examples = sum(counts.values())
  logging.info('%s: %d images written to %s (%d skipped)', split, num_examples, path,
               len(skipped))
  return {'file': path.name, 'num_examples': num_examples,
          'class_counts': {c: counts[c] for c in class_names}, 'skipped': skipped}


def prepare(root: str | Path, out: str | Path, *, val_fraction: float = 0.1,
            image_size_max: int = 0, skip_bad_images: bool = False,
            workers: int = 0) -> dict[str, Any]:
  """Converts ROOT into DIR (see the module docstring); returns the metadata written."""
  root, out = Path(root).resolve(), Path(out)
  if not 0 <= val_fraction < 1:
    raise ValueError(f'--val-fraction must be in [0, 1), got {val_fraction}')
  class_names, splits = plan_splits(root, val_fraction)
  out.mkdir(parents=True, exist_ok=True)
  (out / folder_format.METADATA_FILE).unlink(missing_ok=True)   # marks the output incomplete
  metadata: dict[str, Any] = {'class_names': class_names, 'source': str(root),
                              'val_fraction': None if (root / 'val').is_dir() else val_fraction,
                              'image_size_max': image_size_max, 'splits': {}}
  pool = (multiprocessing.get_context('spawn').Pool(workers) if workers > 1 else None)
  try:
    for split, items in splits.items():
      metadata['splits'][split] = write_split(
          out, split, items, root, class_names, image_size_max=image_size_max,
          skip_bad_images=skip_bad_images, pool=pool)
  finally:
    if pool:
      pool.terminate()
  folder_format.write_metadata(out, metadata)
  return metadata


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='python -m resnet_jax.data.prepare', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--image-folder', required=True,
                 help='ROOT with train/<class>/ (and val/<class>/), or just ROOT/<class>/')
  p.add_argument('--out', required=True, help='output directory DIR (data.data_dir)')
  p.add_argument('--val-fraction', type=float, default=0.1,
                 help='share of each class held out as val when ROOT/val is absent (0: none)')
  p.add_argument('--image-size-max', type=int, default=0,
                 help='shrink images whose shorter side exceeds this (0: store files as they are)')
  p.add_argument('--skip-bad-images', action='store_true',
                 help='leave undecodable files out (listed in dataset.json) instead of stopping')
  p.add_argument('--workers', type=int, default=os.cpu_count(), help='decoding processes')
  args = p.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  try:
    metadata = prepare(args.image_folder, args.out, val_fraction=args.val_fraction,
                       image_size_max=args.image_size_max, skip_bad_images=args.skip_bad_images,
                       workers=args.workers)
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  for split, info in metadata['splits'].items():
    skipped = f", {len(info['skipped'])} bad files skipped" if info['skipped'] else ''
    print(f"{split}: {info['num_examples']} images{skipped}; per class: "
          + ', '.join(f'{c} {n}' for c, n in info['class_counts'].items()))
  print(f"{len(metadata['class_names'])} classes written to {args.out} "
        f'(train with --config.data.source=folder --config.data.data_dir={args.out})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
