"""The grain pipeline: this process's share of a split, augmented and batched.

Each example's augmentation is planned on its own (`LoadExample`: the record read, the crop
planned on the image header), then each batch is decoded, resized and stacked at once
(`LoadExample.collate`), so that a decoder that works on batches (nvJPEG) gets them.

Train: shuffle (a new order every epoch), random augmentation (its randomness a function of the
seed and the example's position in the stream, so the batches do not depend on the number of
workers), per-epoch batches with the remainder dropped, repeated forever. The pipeline is a
`grain.MapDataset`, so resuming at step k is `dataset[k:]`. Eval: one pass, the last batch padded
with `mask=False` examples.
"""

import dataclasses
import math
from typing import Any, Callable, Iterator, Protocol, Sequence

import grain
import numpy as np
from absl import flags, logging

from resnet_jax.data.decode import BadImageError
from resnet_jax.data.splits import Records, shard_indices
from resnet_jax.data.transforms import Crop, ImageTransform

HostBatch = dict[str, np.ndarray]
READ_THREADS = 1            # threads per process (main or worker) that build batches
WORKER_BUFFER_BATCHES = 2   # finished batches each worker process keeps ready


def derive_seed(seed: int, *salt: int) -> int:
  """A 32-bit seed for one use (`salt`) of the config seed."""
  return int(np.random.SeedSequence([seed, *salt]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True)
class Planned:
  """An example whose image is planned (`Crop`) or finished (uint8 array). `index` -1: eval
  padding. `rng_state`: train's random generator after the planning, for a replacement."""
  index: int
  label: int
  image: Crop | np.ndarray
  rng_state: dict[str, Any] | None = None


class LoadExample:
  """Example index -> `Planned` (grain's map); `collate`: `Planned` examples -> a batch
  `{'image': uint8 [B, S, S, C], 'label': int32 [B]}` (+ `'mask'` for eval).

  A bad image raises `BadImageError` naming its record and file; with `skip_bad_images` it is
  logged and counted, and replaced by the next good record (train) or masked out (eval).
  """

  def __init__(self, records: Records, transform: ImageTransform, *, train: bool,
               skip_bad_images: bool):
    self.records = records
    self.transform = transform
    self.train = train
    self.skip_bad_images = skip_bad_images
    self.skipped = 0

  def _plan(self, index: int, rng: np.random.Generator | None) -> Planned:
    record = self.records[index]
    if self.train:
      image = self.transform.plan_train(record['image'], record['key'], rng)
      return Planned(index, record['label'], image, rng.bit_generator.state)
    return Planned(index, record['label'], self.transform.plan_eval(record['image'],
                                                                     record['key']))

  def _skip(self, error: BadImageError) -> None:
    if not self.skip_bad_images:
      raise error
    self.skipped += 1
    logging.warning('skipped a bad image (%d in this process so far): %s', self.skipped, error)

  def _padding(self) -> Planned:
    t = self.transform
    return Planned(-1, 0, np.zeros((t.size, t.size, t.channels), np.uint8))

  def _first_good(self, index: int, rng: np.random.Generator, *, finish: bool) -> Planned:
    """The first record from `index` on whose image plans (and with `finish`, decodes)."""
    n = len(self.records)
    for attempt in range(n):
      try:
        planned = self._plan((index + attempt) % n, rng)
        if finish:
          planned = dataclasses.replace(planned, image=self.transform.finish(planned.image))
        return planned
      except BadImageError as e:
        self._skip(e)
    raise BadImageError('no record of the split could be decoded')

  def __call__(self, index: int, rng: np.random.Generator | None = None) -> Planned:
    if self.train:
      return self._first_good(index, rng, finish=False)
    if index < 0:
      return self._padding()
    try:
      return self._plan(index, None)
    except BadImageError as e:
      self._skip(e)
      return self._padding()

  def _replacement(self, bad: Planned) -> Planned:
    """For a train image that fails to decode: the next good record, finished, its randomness
    continuing the bad one's (the batches stay a function of the seed)."""
    rng = np.random.Generator(getattr(np.random, bad.rng_state['bit_generator'])())
    rng.bit_generator.state = bad.rng_state
    return self._first_good(bad.index + 1, rng, finish=True)

  def collate(self, examples: Sequence[Planned]) -> HostBatch:
    """The batch of `examples`: their crops decoded together, resized and flipped."""
    crops = [e.image for e in examples if isinstance(e.image, Crop)]
    decoded = iter(self.transform.decode_regions(crops))
    finished = []
    for e in examples:
      if isinstance(e.image, Crop):
        try:
          e = dataclasses.replace(e, image=self.transform.render(e.image, next(decoded)))
        except BadImageError as error:
          self._skip(error)
          e = self._replacement(e) if self.train else self._padding()
      finished.append(e)
    batch = {'image': np.stack([e.image for e in finished]),
             'label': np.array([e.label for e in finished], np.int32)}
    if not self.train:
      batch['mask'] = np.array([e.index >= 0 for e in finished])
    return batch


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
                     f'batch of {batch_size}: lower --config.batch_size (the global batch, '
                     f'{batch_size * process_count} here) or add images')
  ds = (EpochShuffle(shard, seed=derive_seed(seed, process_index, 0))
        .random_map(load, seed=derive_seed(seed, process_index, 1))
        .batch(batch_size, drop_remainder=True, batch_fn=load.collate)
        .repeat())
  return ds, steps_per_epoch


def eval_steps(num_examples: int, batch_size: int, process_count: int) -> int:
  """Batches per process of one eval pass (the same in every process)."""
  return math.ceil(math.ceil(num_examples / process_count) / batch_size)


class EvalExamples(Protocol):
  """Makes eval examples (index -1: padding) and batches them: `LoadExample`, or
  `eval_protocols.ViewExamples`."""

  records: Records

  def __call__(self, index: int) -> Any: ...

  def collate(self, examples: Sequence[Any]) -> HostBatch: ...


def eval_dataset(load: EvalExamples, *, batch_size: int, process_index: int,
                 process_count: int) -> grain.MapDataset:
  """One pass over this process's share, padded (index -1) to whole batches."""
  n = len(load.records)
  shard = shard_indices(n, process_index, process_count, drop_remainder=False)
  indices = np.full(eval_steps(n, batch_size, process_count) * batch_size, -1, np.int64)
  indices[:len(shard)] = shard
  return grain.MapDataset.source(indices.tolist()).map(load).batch(batch_size,
                                                                   batch_fn=load.collate)


def host_batches(ds: grain.MapDataset, *, start: int = 0, num_workers: int = 0,
                 worker_init: Callable[[int, int], None] | None = None) -> Iterator[HostBatch]:
  """Batches `start`, `start + 1`, ... of `ds`, built in `num_workers` processes (0: here);
  each worker process first calls `worker_init(worker_index, num_workers)`."""
  it = ds[start:].to_iter_dataset(grain.ReadOptions(num_threads=READ_THREADS,
                                                    prefetch_buffer_size=READ_THREADS))
  if num_workers:
    if not flags.FLAGS.is_parsed():
      # grain 0.2.18 reads an absl flag when it starts workers, which fails outside an absl app
      # (google/grain issue 1355); the flags' defaults are what we want then.
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=num_workers, per_worker_buffer_size=WORKER_BUFFER_BATCHES),
        worker_init_fn=worker_init)
  return iter(it)
