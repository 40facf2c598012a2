"""MNIST-format idx files (MNIST, Fashion-MNIST, ...), gzipped or not, read into memory."""

import gzip
import struct
from pathlib import Path

import numpy as np

from resnet_jax.data.splits import ArrayRecords, Split

DEFAULT_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
                         'Sneaker', 'Bag', 'Ankle boot')
_PREFIX = {'train': 'train', 'test': 't10k'}


def read_idx(path: Path) -> np.ndarray:
  """An idx file of unsigned bytes as a uint8 array of its shape."""
  opener = gzip.open if path.suffix == '.gz' else open
  try:
    with opener(path, 'rb') as f:
      data = f.read()
  except (EOFError, gzip.BadGzipFile) as e:
    raise ValueError(f'{path}: not a readable gzip file ({e})') from e
  if len(data) < 4 or data[:2] != b'\0\0':
    raise ValueError(f'{path} is not an idx file (bad magic number)')
  dtype, ndim = data[2], data[3]
  if dtype != 0x08:
    raise ValueError(f'{path}: idx element type 0x{dtype:02x} is not supported (only unsigned '
                     'bytes, 0x08)')
  if len(data) < 4 + 4 * ndim:
    raise ValueError(f'{path}: the header of a {ndim}-dimensional idx file is cut short '
                     '(truncated file?)')
  shape = struct.unpack(f'>{ndim}I', data[4:4 + 4 * ndim])
  body = data[4 + 4 * ndim:]
  if len(body) != int(np.prod(shape)):
    raise ValueError(f'{path}: {len(body)} bytes of data for shape {shape} (truncated file?)')
  return np.frombuffer(body, np.uint8).reshape(shape)


def find_idx_file(directory: Path, prefix: str, kind: str) -> Path:
  """`{prefix}-{kind}-idx?-ubyte[.gz]`, also with the '.idx' spelling of some copies."""
  ndim = 3 if kind == 'images' else 1
  names = [f'{prefix}-{kind}{sep}idx{ndim}-ubyte{gz}' for sep in ('-', '.') for gz in ('.gz', '')]
  for name in names:
    if (directory / name).is_file():
      return directory / name
  raise FileNotFoundError(f'no {prefix} {kind} idx file in {directory} (looked for '
                          f'{", ".join(names)})')


def class_names(dataset_name: str, num_classes: int) -> tuple[str, ...]:
  if 'fashion' in dataset_name and num_classes == len(FASHION_MNIST_CLASSES):
    return FASHION_MNIST_CLASSES
  return tuple(str(i) for i in range(num_classes))


def load_idx_split(dataset_name: str, split: str, data_dir: str) -> Split:
  """'train' (train-*) or 'test' (t10k-*) of the idx files in `data_dir`."""
  directory = Path(data_dir or DEFAULT_DIR)
  if not directory.is_dir():
    raise FileNotFoundError(f'idx data directory {directory} does not exist (data.data_dir)')
  if split not in _PREFIX:
    raise ValueError(f"idx datasets have the splits 'train' and 'test', not {split!r}")
  images_path = find_idx_file(directory, _PREFIX[split], 'images')
  labels_path = find_idx_file(directory, _PREFIX[split], 'labels')
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise ValueError(f'{images_path} {images.shape} and {labels_path} {labels.shape} do not '
                     'match: expected [N, H, W] images and [N] labels')
  num_classes = max(10, int(labels.max(initial=0)) + 1)
  return Split(records=ArrayRecords(images[..., None], labels.astype(np.int32), str(images_path)),
               class_names=class_names(dataset_name or directory.name, num_classes), channels=1,
               name=f'{dataset_name or directory.name}/{split}')
