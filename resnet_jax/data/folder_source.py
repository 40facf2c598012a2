"""Image folders prepared by `python -m resnet_jax.data.prepare` (ArrayRecord + dataset.json)."""

import struct
from pathlib import Path

import grain

from resnet_jax.data import folder_format
from resnet_jax.data.decode import BadImageError
from resnet_jax.data.splits import Record, Split, check_split_names


class FolderRecords:
  """One split's ArrayRecord file seen as records; keys name the source image and the record."""

  def __init__(self, path: str):
    self.path = path
    try:
      self._source = grain.sources.ArrayRecordDataSource([path])
    except RuntimeError as e:   # array_record's own error names no file, at times nothing
      raise ValueError(f'{path} is not a readable ArrayRecord file ({e or "corrupt or cut short"}'
                       '); copy it again, or prepare the dataset again') from e

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> Record:
    try:
      record = folder_format.decode_record(self._source[index])
    except (struct.error, UnicodeDecodeError) as e:
      raise BadImageError(f'record {index} of {self.path} is not an image record of '
                          f'resnet_jax.data.prepare ({e})') from e
    record['key'] = f'{record["key"]} (record {index} of {self.path})'
    return record


def load_folder_split(split: str, data_dir: str) -> Split:
  directory = Path(data_dir)
  if not data_dir:
    raise ValueError('data.source=folder needs data.data_dir: the output directory of '
                     'python -m resnet_jax.data.prepare')
  metadata = folder_format.read_metadata(directory)
  check_split_names(split, list(metadata['splits']), f'the prepared dataset {directory}')
  path = directory / metadata['splits'][split]['file']
  return Split(records=FolderRecords(str(path)), class_names=tuple(metadata['class_names']),
               channels=3, name=f'{directory.name}/{split}')
