"""Synthetic data made on the devices: random uint8 images and labels, deterministic from the seed.

Train cycles over a few distinct batches generated once (no work per step: fit for benchmarks);
eval makes one pass over `fake_num_examples` examples, the last batch padded and masked.
"""

import functools
import itertools
import math
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from resnet_jax import parallel
from resnet_jax.data.inputs import Batch, EvalInput, Input, TrainInput
from resnet_jax.data.splits import DatasetInfo

DISTINCT_TRAIN_BATCHES = 4


def fake_batch(index: jax.Array, *, seed: int, stream: int, batch_size: int,
               image_shape: tuple[int, int, int], num_classes: int,
               num_examples: int) -> Batch:
  """Batch `index` of stream 0 (train) or 1 (eval); `mask` marks rows before `num_examples`."""
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), index)
  k_image, k_label = jax.random.split(key)
  rows = index * batch_size + jnp.arange(batch_size)
  return {'image': jax.random.bits(k_image, (batch_size, *image_shape), jnp.uint8),
          'label': jax.random.randint(k_label, (batch_size,), 0, num_classes, jnp.int32),
          'mask': rows < num_examples}


def fake_input(d: ml_collections.ConfigDict, mesh: Mesh, *, train: bool, batch_size: int,
               seed: int) -> Input:
  image_shape = tuple(d.fake_image_shape)
  if len(image_shape) != 3 or image_shape[:2] != (d.image_size, d.image_size):
    raise ValueError(f'data.fake_image_shape={image_shape} must be (H, W, C) with H = W = '
                     f'data.image_size ({d.image_size})')
  n_all = d.fake_num_examples
  n = (n_all - d.holdout if train else d.holdout) if d.holdout else n_all
  if n <= 0:
    raise ValueError(f'fake data: {n} examples (fake_num_examples={n_all}, holdout={d.holdout})')
  info = DatasetInfo(d.fake_num_classes, tuple(str(i) for i in range(d.fake_num_classes)),
                     image_shape)
  make = jax.jit(functools.partial(fake_batch, seed=seed, stream=0 if train else 1,
                                   batch_size=batch_size, image_shape=image_shape,
                                   num_classes=d.fake_num_classes, num_examples=n),
                 out_shardings=parallel.batch_sharding(mesh))

  if not train:
    def one_pass() -> Iterator[Batch]:
      return (make(i) for i in range(math.ceil(n / batch_size)))
    return EvalInput(one_pass, info=info, num_examples=n)

  steps_per_epoch = n // batch_size
  if not steps_per_epoch:
    raise ValueError(f'fake data: {n} examples, fewer than batch_size={batch_size}')
  distinct: list[Batch] = []

  def batches(step: int) -> Iterator[Batch]:
    if not distinct:
      for i in range(min(DISTINCT_TRAIN_BATCHES, steps_per_epoch)):
        batch = make(i)
        distinct.append({'image': batch['image'], 'label': batch['label']})
    return itertools.islice(itertools.cycle(distinct), step % len(distinct), None)

  return TrainInput(batches, info=info, num_examples=n, steps_per_epoch=steps_per_epoch)
