"""The on-disk format of a prepared image folder (written by `prepare`, read by `folder_source`).

    DIR/dataset.json         class names, splits with their files, sizes and per-class counts
    DIR/<split>.array_record one record per image: label, source path, the encoded file bytes

A record is `<u32 label><u16 n><n bytes of UTF-8 path><image file bytes>` (little-endian).
"""

import json
import os
import struct
from pathlib import Path
from typing import Any

from resnet_jax.data.splits import Record

METADATA_FILE = 'dataset.json'
FORMAT = 'resnet_jax.image_folder/1'
_HEADER = struct.Struct('<IH')


def split_file(split: str) -> str:
  return f'{split}.array_record'


def text(name: str) -> str:
  """A file system name as text: its bytes that are not UTF-8 (a Latin-1 name from an old
  archive, say) written as \\xNN."""
  return os.fsencode(name).decode('utf-8', 'backslashreplace')


def encode_record(label: int, path: str, image: bytes) -> bytes:
  path_bytes = text(path).encode('utf-8')
  return _HEADER.pack(label, len(path_bytes)) + path_bytes + image


def decode_record(record: bytes) -> Record:
  label, n = _HEADER.unpack_from(record)
  start = _HEADER.size
  return {'image': record[start + n:], 'label': label,
          'key': record[start:start + n].decode('utf-8')}


def write_metadata(directory: Path, metadata: dict[str, Any]) -> None:
  (directory / METADATA_FILE).write_text(json.dumps(dict(metadata, format=FORMAT), indent=1))


def read_metadata(directory: Path) -> dict[str, Any]:
  path = directory / METADATA_FILE
  if not directory.is_dir():
    raise FileNotFoundError(f'prepared image-folder dataset {directory} does not exist; create it '
                            'with: python -m resnet_jax.data.prepare --image-folder ROOT '
                            f'--out {directory}')
  if not path.is_file():
    raise FileNotFoundError(f'{directory} is not a prepared image-folder dataset (no '
                            f'{METADATA_FILE}); if it is your image folder, prepare it into '
                            'another directory: python -m resnet_jax.data.prepare --image-folder '
                            f'{directory} --out DIR, then --config.data.data_dir=DIR')
  try:
    metadata = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON ({e}); prepare the dataset again') from e
  if not isinstance(metadata, dict) or metadata.get('format') != FORMAT:
    found = metadata.get('format') if isinstance(metadata, dict) else type(metadata).__name__
    raise ValueError(f'{path}: format {found!r}, expected {FORMAT!r}')
  if missing := [k for k in ('class_names', 'splits') if k not in metadata]:
    raise ValueError(f'{path} lacks {" and ".join(missing)}; prepare the dataset again')
  return metadata
