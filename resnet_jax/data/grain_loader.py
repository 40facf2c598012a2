"""The grain pipeline: this process's share of a split, decoded and augmented per example, batched.

Train: shuffle (a new order every epoch), random augmentation (its randomness a function of the
seed and the example's position in the stream, so the batches do not depend on the number of
workers), per-epoch batches with the remainder dropped, repeated forever. The pipeline is a
`grain.MapDataset`, so resuming at step k is `dataset[k:]`. Eval: one pass, the last batch padded
with `mask=False` examples.
"""

import math
from typing import Iterator

import grain
import numpy as np
from absl import flags, logging

from resnet_jax.data.decode import BadImageError
from resnet_jax.data.splits import Records, shard_indices
from resnet_jax.data.transforms import ImageTransform

HostBatch = dict[str, np.ndarray]
READ_THREADS = 1            # threads per process (main or worker) that build batches
WORKER_BUFFER_BATCHES = 2   # finished batches each worker process keeps ready


def derive_seed(seed: int, *salt: int) -> int:
  """A 32-bit seed for one use (`salt`) of the config seed."""
  return int(np.random.SeedSequence([seed, *salt]).generate_state(1)[0])


class LoadExample:
  """Example index -> `{'image': uint8 [S, S, C], 'label': int32}` (+ `'mask'` for eval).

  A bad image raises `BadImageError` naming its record and file; with `skip_bad_images` it is
  logged and counted, and replaced by the next good record (train) or masked out (eval). Index -1
  is eval padding: a zero image with `mask=False`.
  """

  def __init__(self, records: Records, transform: ImageTransform, *, train: bool,
               skip_bad_images: bool):
    self.records = records
    self.transform = transform
    self.train = train
    self.skip_bad_images = skip_bad_images
    self.skipped = 0

  def _load(self, index: int, rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
    record = self.records[index]
    if self.train:
      image = self.transform.train(record['image'], record['key'], rng)
    else:
      image = self.transform.eval(record['image'], record['key'])
    return image, record['label']

  def _skip(self, error: BadImageError) -> None:
    if not self.skip_bad_images:
      raise error
    self.skipped += 1
    logging.warning('skipped a bad image (%d in this process so far): %s', self.skipped, error)

  def _padding(self) -> dict[str, np.ndarray]:
    t = self.transform
    return {'image': np.zeros((t.size, t.size, t.channels), np.uint8), 'label': np.int32(0),
            'mask': np.bool_(False)}

  def __call__(self, index: int, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    if not self.train:
      if index < 0:
        return self._padding()
      try:
        image, label = self._load(index, None)
      except BadImageError as e:
        self._skip(e)
        return self._padding()
      return {'image': image, 'label': np.int32(label), 'mask': np.bool_(True)}
    n = len(self.records)
    for attempt in range(n):
      try:
        image, label = self._load((index + attempt) % n, rng)
        return {'image': image, 'label': np.int32(label)}
      except BadImageError as e:
        self._skip(e)
    raise BadImageError('no record of the split could be decoded')


class EpochShuffle(grain.MapDataset):
  """`indices` in a new random order each epoch: element k is epoch k // n's permutation at k % n.

  Replaces grain's `shuffle`, which computes every position on its own (30 to 160 us each here, 1-7%
  of the work on an image); one numpy permutation per epoch costs under 1 us a position.
  """

  def __init__(self, indices: range, *, seed: int):
    super().__init__()
    self._indices = indices
    self._seed = seed
    self._epoch_order: tuple[int, np.ndarray] = (-1, np.empty(0, np.int64))

  def __len__(self) -> int:
    return len(self._indices)

  def __str__(self) -> str:
    return f'EpochShuffle(len={len(self)}, seed={self._seed})'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, position = divmod(index, len(self._indices))
    cached_epoch, order = self._epoch_order   # one read: safe when threads share the dataset
    if cached_epoch != epoch:
      order = np.random.default_rng([self._seed, epoch]).permutation(len(self._indices))
      self._epoch_order = (epoch, order)
    return self._indices[order[position]]


def train_dataset(load: LoadExample, *, seed: int, batch_size: int, process_index: int,
                  process_count: int) -> tuple[grain.MapDataset, int]:
  """The infinite stream of this process's train batches, and its steps per epoch."""
  shard = shard_indices(len(load.records), process_index, process_count, drop_remainder=True)
  steps_per_epoch = len(shard) // batch_size
  if not steps_per_epoch:
    raise ValueError(f'{len(shard)} training examples per process, fewer than the per-process '
                     f'batch of {batch_size}')
  ds = (EpochShuffle(shard, seed=derive_seed(seed, process_index, 0))
        .random_map(load, seed=derive_seed(seed, process_index, 1))
        .batch(batch_size, drop_remainder=True)
        .repeat())
  return ds, steps_per_epoch


def eval_steps(num_examples: int, batch_size: int, process_count: int) -> int:
  """Batches per process of one eval pass (the same in every process)."""
  return math.ceil(math.ceil(num_examples / process_count) / batch_size)


def eval_dataset(load: LoadExample, *, batch_size: int, process_index: int,
                 process_count: int) -> grain.MapDataset:
  """One pass over this process's share, padded (index -1) to whole batches."""
  n = len(load.records)
  shard = shard_indices(n, process_index, process_count, drop_remainder=False)
  indices = np.full(eval_steps(n, batch_size, process_count) * batch_size, -1, np.int64)
  indices[:len(shard)] = shard
  return grain.MapDataset.source(indices.tolist()).map(load).batch(batch_size)


def host_batches(ds: grain.MapDataset, *, start: int = 0,
                 num_workers: int = 0) -> Iterator[HostBatch]:
  """Batches `start`, `start + 1`, ... of `ds`, built in `num_workers` processes (0: here)."""
  it = ds[start:].to_iter_dataset(grain.ReadOptions(num_threads=READ_THREADS,
                                                    prefetch_buffer_size=READ_THREADS))
  if num_workers:
    if not flags.FLAGS.is_parsed():
      # grain 0.2.18 reads an absl flag when it starts workers, which fails outside an absl app
      # (google/grain issue 1355); the flags' defaults are what we want then.
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=WORKER_BUFFER_BATCHES))
  return iter(it)
