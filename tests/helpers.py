"""Small builders shared by the tests: configs, generated datasets, metrics readers."""

import gzip
import struct
from pathlib import Path

import numpy as np

from resnet_jax.config_base import base_config


def fake_config(**overrides):
  """A tiny run on fake data: small_resnet of width 8 on 16x16 images, a few steps."""
  c = base_config()
  c.model.name = 'small_resnet'
  c.model.width = 8
  c.data.update(source='fake', fake_image_shape=(16, 16, 3), fake_num_examples=256,
                fake_num_classes=10, image_size=16)
  c.batch_size = 32
  c.eval_batch_size = 64
  c.optimizer.lr_batch_size = 32
  c.schedule.name = 'constant'
  c.log_every_steps = 2
  c.update(overrides)
  return c


def write_idx(path: Path, array: np.ndarray) -> None:
  """Writes an idx file (the MNIST format), gzipped."""
  code = {1: 0x0801, 3: 0x0803}[array.ndim]
  header = struct.pack('>I', code) + b''.join(struct.pack('>I', d) for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def write_idx_dataset(directory: Path, num_train: int, num_test: int, seed: int = 0,
                      learnable: bool = False) -> Path:
  """A Fashion-MNIST-shaped dataset (28x28 grey images, 10 classes) of random content.

  `learnable`: the brightness of an image grows with its label, so a net can learn the labels.
  """
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  for prefix, n in (('train', num_train), ('t10k', num_test)):
    labels = rng.integers(0, 10, (n,))
    images = rng.integers(0, 256, (n, 28, 28))
    if learnable:
      images = images // 4 + 20 * labels[:, None, None]
    write_idx(directory / f'{prefix}-images-idx3-ubyte.gz', images)
    write_idx(directory / f'{prefix}-labels-idx1-ubyte.gz', labels)
  return directory



def mark_worker(worker_index: int, worker_count: int, *, directory: str) -> None:
  """A grain `worker_init_fn` that leaves a file per worker process, for tests of start-up."""
  Path(directory, f'{worker_index}_of_{worker_count}').touch()
