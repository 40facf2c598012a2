"""tfds datasets prepared as ArrayRecord, read with `tfds.data_source` (no TensorFlow needed).

Records are read as raw `tf.Example` bytes and parsed with tfds's own proto module, so the image
stays encoded until the augmentation, which decodes only what its crop needs.
"""

import dataclasses

import tensorflow_datasets as tfds
from google.protobuf.message import DecodeError
from tensorflow_datasets.proto import tf_example_pb2

from resnet_jax.data.decode import BadImageError
from resnet_jax.data.splits import Record, Split


def _prepare_hint(name: str, data_dir: str) -> str:
  where = f' --data_dir={data_dir}' if data_dir else ''
  hint = (f"Prepare it once on a machine with TensorFlow: pip install -e '.[prepare]' && "
          f'tfds build {name}{where} --file_format=array_record')
  if name.startswith('imagenet2012'):
    hint += (' --manual_dir=DIR (DIR holding ILSVRC2012_img_train.tar and '
             'ILSVRC2012_img_val.tar, downloaded by hand from image-net.org)')
  return hint


def prepared_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """The builder of a dataset prepared in `data_dir`; a clear error otherwise.

  (tfds.data_source itself explains a dataset prepared as TFRecord, which has no random access.)
  """
  shown_dir = data_dir or ('the default tfds data_dir ($TFDS_DATA_DIR or '
                           f'{tfds.core.constants.DATA_DIR})')
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise FileNotFoundError(
        f'tfds dataset {name!r} is neither a tfds catalog name nor prepared in {shown_dir}. '
        + _prepare_hint(name, data_dir)) from e
  if not builder.is_prepared():
    raise FileNotFoundError(f'tfds dataset {name!r} is not prepared in {shown_dir} '
                            f'(nothing at {builder.data_dir}). ' + _prepare_hint(name, data_dir))
  return builder


@dataclasses.dataclass(frozen=True)
class TfdsRecords:
  """A tfds ArrayRecord data source (raw bytes) seen as records."""
  source: object
  name: str

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> Record:
    """The record at `index`; `BadImageError` naming it where it is not an image example."""
    key = f'{self.name}[{index}]'
    try:
      features = tf_example_pb2.Example.FromString(self.source[index]).features.feature
      return {'image': features['image'].bytes_list.value[0],
              'label': int(features['label'].int64_list.value[0]), 'key': key}
    except (DecodeError, IndexError) as e:
      raise BadImageError(f'{key}: not a tf.Example with an image and a label '
                          f'({type(e).__name__}: {e})') from e


def load_tfds_split(name: str, split: str, data_dir: str) -> Split:
  """A split ('train', 'test', 'train[:90%]', ...) of a tfds image-classification dataset."""
  builder = prepared_builder(name, data_dir)
  features = builder.info.features
  if not {'image', 'label'} <= set(features.keys()):
    raise ValueError(f'tfds dataset {name!r} has features {sorted(features.keys())}; an image '
                     "classification dataset needs 'image' and 'label'")
  source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False,
                            deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  channels = features['image'].shape[-1] or 3
  return Split(records=TfdsRecords(source, f'{name}/{split}'),
               class_names=tuple(features['label'].names), channels=channels,
               name=f'{name}/{split}')
