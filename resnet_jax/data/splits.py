"""What every source gives: a random-access split of records, with its class names and channels.

A record is a dict `{'image': encoded bytes or uint8 array [H, W, C], 'label': int, 'key': str}`;
`key` names where the record comes from (file, dataset and index) for error messages.
"""

import dataclasses
from typing import Any, NamedTuple, Protocol, Sequence

import numpy as np

Record = dict[str, Any]


class DatasetInfo(NamedTuple):
  """What the model needs to know about a dataset (`image_shape` is the pipeline's output)."""
  num_classes: int
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]


class Records(Protocol):
  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> Record: ...


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a dataset: `records[i]` for i < len(records); images have `channels` (1 or 3)."""
  records: Records
  class_names: tuple[str, ...]
  channels: int
  name: str   # e.g. 'cifar10/train', for messages

  def __len__(self) -> int:
    return len(self.records)


@dataclasses.dataclass(frozen=True)
class ArrayRecords:
  """Records of in-memory arrays (idx files): images uint8 [N, H, W, C], labels [N]."""
  images: np.ndarray
  labels: np.ndarray
  name: str

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> Record:
    return {'image': self.images[index], 'label': int(self.labels[index]),
            'key': f'{self.name}[{index}]'}


@dataclasses.dataclass(frozen=True)
class SubRecords:
  """Records `start:stop` of another Records (a holdout part)."""
  parent: Records
  start: int
  stop: int

  def __len__(self) -> int:
    return self.stop - self.start

  def __getitem__(self, index: int) -> Record:
    if not 0 <= index < len(self):
      raise IndexError(f'record {index} out of range [0, {len(self)})')
    return self.parent[self.start + index]


def holdout_part(split: Split, holdout: int, *, train: bool) -> Split:
  """The first len-holdout records (train) or the last `holdout` records (eval) of a split."""
  n = len(split)
  if not 0 < holdout < n:
    raise ValueError(f'data.holdout={holdout} must be between 1 and the size of '
                     f'{split.name} minus one ({n - 1})')
  start, stop = (0, n - holdout) if train else (n - holdout, n)
  part = 'train' if train else 'holdout'
  return dataclasses.replace(split, records=SubRecords(split.records, start, stop),
                             name=f'{split.name}[{start}:{stop}] ({part})')


def shard_indices(num_examples: int, process_index: int, process_count: int, *,
                  drop_remainder: bool) -> range:
  """The examples of one process: p, p + P, p + 2P, ... (equal shares when `drop_remainder`).

  Strided, not contiguous, so that every process sees every class even when a split is sorted.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} not in [0, {process_count})')
  stop = num_examples - num_examples % process_count if drop_remainder else num_examples
  return range(process_index, stop, process_count)


def check_split_names(requested: str, available: Sequence[str], where: str) -> None:
  if requested not in available:
    raise ValueError(f'split {requested!r} is not in {where}; it has {", ".join(available)}. '
                     'Set --config.data.train_split / --config.data.eval_split (the split a run '
                     'evaluates on) to one of them.')
