"""Device-resident data: the whole split on every device as uint8, batches made by one jitted call.

For small datasets (CIFAR, MNIST, Fashion-MNIST). Each epoch is a permutation computed in JAX from
the seed and the epoch number; batch gather, random pad-crop and flips run in one jitted function
whose output is sharded over the 'data' axis, so a step costs the host only a dispatch.
"""

import concurrent.futures
import functools
import math
import os
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding

from resnet_jax import parallel
from resnet_jax.data.decode import BadImageError, decode_array
from resnet_jax.data.inputs import Batch, EvalInput, Input, TrainInput
from resnet_jax.data.splits import DatasetInfo, Split

DEVICE_AUGMENTS = ('cifar', 'none')
_CHUNK = 1024   # records decoded per thread task


def load_arrays(split: Split, *, skip_bad_images: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """All images of a split as uint8 [N, H, W, C] (one size for all) and labels int32 [N]."""
  def load_chunk(indices: range) -> list[tuple[np.ndarray, int, str]]:
    loaded = []
    for index in indices:
      try:
        record = split.records[index]
        image = decode_array(record['image'], split.channels, record['key'])
      except BadImageError as e:
        if not skip_bad_images:
          raise
        logging.warning('skipped a bad image: %s', e)
        continue
      loaded.append((image, record['label'], record['key']))
    return loaded

  n = len(split)
  chunks = [range(start, min(start + _CHUNK, n)) for start in range(0, n, _CHUNK)]
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    loaded = [item for chunk in pool.map(load_chunk, chunks) for item in chunk]
  if len(loaded) < n:
    logging.warning('%s: skipped %d bad images of %d', split.name, n - len(loaded), n)
  if not loaded:
    raise ValueError(f'{split.name}: no image could be decoded')
  first_image, _, first_key = loaded[0]
  for image, _, key in loaded:
    if image.shape != first_image.shape:
      raise ValueError(f'device_resident needs images of one size: {key} is {image.shape}, '
                       f'{first_key} is {first_image.shape}')
  return (np.stack([image for image, _, _ in loaded]),
          np.array([label for _, label, _ in loaded], np.int32))


def replicate(array: np.ndarray, mesh: Mesh) -> jax.Array:
  """A host array placed whole on every device of the mesh (over all processes)."""
  return jax.make_array_from_callback(array.shape, parallel.replicated(mesh),
                                      lambda index: array[index])


def center_crop(images: jax.Array, size: int) -> jax.Array:
  h, w = images.shape[1:3]
  top, left = (h - size) // 2, (w - size) // 2
  return images[:, top:top + size, left:left + size]


def pad_crop_flip(images: jax.Array, key: jax.Array, *, size: int, pad: int, hflip: bool,
                  vflip: bool) -> jax.Array:
  """Per-example zero pad, random size x size crop and random flips of a uint8 batch."""
  b, h, w, c = images.shape
  if min(h, w) + 2 * pad < size:
    raise ValueError(f'{h}x{w} images padded by {pad} are smaller than the {size} crop')
  ky, kx, kh, kv = jax.random.split(key, 4)
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ys = jax.random.randint(ky, (b,), 0, h + 2 * pad - size + 1)
  xs = jax.random.randint(kx, (b,), 0, w + 2 * pad - size + 1)
  crop = jax.vmap(lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (size, size, c)))
  images = crop(padded, ys, xs)
  if hflip:
    images = jnp.where(jax.random.bernoulli(kh, 0.5, (b, 1, 1, 1)), images[:, :, ::-1], images)
  if vflip:
    images = jnp.where(jax.random.bernoulli(kv, 0.5, (b, 1, 1, 1)), images[:, ::-1], images)
  return images


def epoch_permutation(epoch: jax.Array, *, seed: int, num_examples: int) -> jax.Array:
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0), epoch)
  return jax.random.permutation(key, num_examples)


def train_batch(images: jax.Array, labels: jax.Array, permutation: jax.Array, step: jax.Array,
                position: jax.Array, *, seed: int, batch_size: int, sharding: NamedSharding,
                augment: str, size: int, pad: int, hflip: bool, vflip: bool) -> Batch:
  """Batch `position` of the epoch ordered by `permutation`; augmentation keyed by seed and step."""
  index = jax.lax.dynamic_slice_in_dim(permutation, position * batch_size, batch_size)
  index = jax.lax.with_sharding_constraint(index, sharding)
  batch = images[index]
  if augment == 'cifar':
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), step)
    batch = pad_crop_flip(batch, key, size=size, pad=pad, hflip=hflip, vflip=vflip)
  else:
    batch = center_crop(batch, size)
  return {'image': batch, 'label': labels[index]}


def eval_batch(images: jax.Array, labels: jax.Array, start: jax.Array, *, batch_size: int,
               sharding: NamedSharding, size: int) -> Batch:
  """Examples start .. start + batch_size - 1, the ones past the end masked out."""
  n = labels.shape[0]
  index = jax.lax.with_sharding_constraint(start + jnp.arange(batch_size), sharding)
  mask = index < n
  index = jnp.minimum(index, n - 1)
  return {'image': center_crop(images[index], size), 'label': labels[index], 'mask': mask}


def device_resident_input(split: Split, d: ml_collections.ConfigDict, mesh: Mesh, *, train: bool,
                          batch_size: int, seed: int) -> Input:
  if d.augment not in DEVICE_AUGMENTS:
    raise ValueError(f'data.device_resident supports data.augment in {DEVICE_AUGMENTS}, not '
                     f'{d.augment!r}; use the grain pipeline (device_resident=False)')
  host_only = {'eval_resize': 0, 'decoder': 'host', 'fast_decode': False}
  for key, default in host_only.items():
    if d[key] != default:
      raise ValueError(f'data.{key}={d[key]!r} is an option of the grain pipeline, which '
                       'data.device_resident=True does not use (it centre-crops without resizing)')
  host_images, host_labels = load_arrays(split, skip_bad_images=d.skip_bad_images)
  h, w = host_images.shape[1:3]
  if d.augment == 'none' or not train:
    if min(h, w) < d.image_size:
      raise ValueError(f'{split.name}: {h}x{w} images are smaller than data.image_size='
                       f'{d.image_size}')
  info = DatasetInfo(len(split.class_names), split.class_names,
                     (d.image_size, d.image_size, split.channels))
  images, labels = replicate(host_images, mesh), replicate(host_labels, mesh)
  n = len(host_labels)
  sharding = parallel.batch_sharding(mesh)
  logging.info('%s on the devices: %s uint8 (%.1f MiB per device)', split.name,
               host_images.shape, host_images.nbytes / 2**20)

  if not train:
    make = jax.jit(functools.partial(eval_batch, batch_size=batch_size, sharding=sharding,
                                     size=d.image_size), out_shardings=sharding)

    def one_pass() -> Iterator[Batch]:
      for start in range(0, math.ceil(n / batch_size) * batch_size, batch_size):
        yield make(images, labels, start)

    return EvalInput(one_pass, info=info, num_examples=n)

  steps_per_epoch = n // batch_size
  if not steps_per_epoch:
    raise ValueError(f'{split.name} has {n} examples, fewer than batch_size={batch_size}')
  permute = jax.jit(functools.partial(epoch_permutation, seed=seed, num_examples=n),
                    out_shardings=parallel.replicated(mesh))
  make = jax.jit(functools.partial(train_batch, seed=seed, batch_size=batch_size,
                                   sharding=sharding, augment=d.augment, size=d.image_size,
                                   pad=d.pad, hflip=d.hflip, vflip=d.vflip),
                 out_shardings=sharding)

  def batches(step: int) -> Iterator[Batch]:
    epoch, position = divmod(step, steps_per_epoch)
    while True:
      permutation = permute(epoch)
      for position in range(position, steps_per_epoch):
        yield make(images, labels, permutation, step, position)
        step += 1
      epoch, position = epoch + 1, 0

  return TrainInput(batches, info=info, num_examples=n, steps_per_epoch=steps_per_epoch)
