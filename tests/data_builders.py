"""Small datasets for the data tests (this module has no tests): image folders, a TF-free tfds
dataset in tfds's own ArrayRecord layout, tfds mock data that works without TensorFlow, and
in-memory splits whose images encode their index."""

import contextlib
import io
from pathlib import Path
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from resnet_jax.config_base import base_config
from resnet_jax.data.splits import ArrayRecords, Split


def write_image_folder(root: Path, counts: dict[str, int], *, split: str = 'train',
                       size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
  """root/split/<class>/<i>.jpg (and every third one a PNG) of random content."""
  rng = np.random.default_rng(seed)
  for c, n in counts.items():
    directory = root / split / c
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
      image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
      image.save(directory / (f'{i}.png' if i % 3 == 2 else f'{i}.jpg'))
  return root


def folder_config(data_dir, **data):
  """A config reading a prepared folder with small crops (16x16 from 40x30 images)."""
  c = base_config()
  c.data.update(dict(source='folder', data_dir=str(data_dir), image_size=16, eval_resize=18,
                     augment='imagenet_scale', scale_range=(18, 30), eval_split='val'), **data)
  c.batch_size = 8
  c.eval_batch_size = 16
  return c


def index_split(num_examples: int, size: int = 4) -> Split:
  """Records whose 1-channel images are filled with index // 256 and index % 256 (two rows)."""
  images = np.zeros((num_examples, size, size, 1), np.uint8)
  index = np.arange(num_examples)
  images[:, :size // 2] = (index // 256)[:, None, None, None]
  images[:, size // 2:] = (index % 256)[:, None, None, None]
  return Split(ArrayRecords(images, index.astype(np.int32), 'index'), tuple('0123456789'), 1,
               'index/train')


def decode_index(images: np.ndarray) -> np.ndarray:
  """The indices of `index_split` images (centre crops of them work too)."""
  images = np.asarray(images)
  return images[:, 0, 0, 0].astype(int) * 256 + images[:, -1, -1, 0].astype(int)


class TinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A 3-class image dataset; label = index % 3 and pixel [0, 0, 0] = index."""
  VERSION = tfds.core.Version('1.0.0')
  SIZES = {'train': 12, 'test': 5}
  url_infos = {}   # nothing to download (and no search for a checksums file next to this code)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3)),
        'label': tfds.features.ClassLabel(names=['cat', 'dog', 'fox'])}))

  def _split_generators(self, dl_manager):
    return {name: self._generate_examples(n) for name, n in self.SIZES.items()}

  def _generate_examples(self, n):
    rng = np.random.default_rng(n)
    for i in range(n):
      pixels = rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
      pixels[0, 0, 0] = i
      yield i, {'image': Image.fromarray(pixels), 'label': i % 3}


def write_tiny_tfds(data_dir: Path) -> Path:
  """Prepares 'tiny_images' in data_dir the way `tfds build --file_format=array_record` does."""
  TinyImages(data_dir=str(data_dir), file_format='array_record').download_and_prepare()
  return data_dir


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
  """`image` saved in format `fmt` (PIL's name: 'PNG', 'JPEG', ...)."""
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, **kw)
  return buffer.getvalue()


def _png(self, image) -> bytes:
  array = np.asarray(image)
  return encode(Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array), 'PNG')


@contextlib.contextmanager
def mock_tfds(num_examples: int):
  """`tfds.testing.mock_data`, made to serve raw records without TensorFlow.

  mock_data backs `tfds.data_source`; for raw records it encodes its random images with
  TensorFlow, so PNG encoding goes through PIL here, and it does not mark datasets prepared.
  """
  with tfds.testing.mock_data(num_examples=num_examples), \
       mock.patch.object(tfds.features.Image, 'encode_example', _png), \
       mock.patch.object(tfds.core.DatasetBuilder, 'is_prepared', return_value=True):
    yield
