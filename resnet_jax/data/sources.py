"""`data.source` -> the split to read: tfds, idx files or a prepared image folder.

Each source's module is imported when it is used: tfds and grain take about a second to import,
which a short run from idx files on the devices need not pay.
"""

import ml_collections

from resnet_jax.data.splits import Split, holdout_part

RECORD_SOURCES = ('tfds', 'idx', 'folder')


def load_split(d: ml_collections.ConfigDict, *, train: bool) -> Split:
  """The train or eval split of `config.data`; with `holdout`, both come from the train split."""
  if d.source not in RECORD_SOURCES:
    raise ValueError(f"unknown data.source {d.source!r}; valid: 'fake', "
                     + ', '.join(repr(s) for s in RECORD_SOURCES))
  name = d.train_split if train or d.holdout else d.eval_split
  if d.source == 'tfds':
    if not d.name:
      raise ValueError("data.source='tfds' needs data.name (e.g. 'cifar10', 'imagenet2012')")
    from resnet_jax.data.tfds_source import load_tfds_split
    split = load_tfds_split(d.name, name, d.data_dir)
  elif d.source == 'idx':
    from resnet_jax.data.idx_source import load_idx_split
    split = load_idx_split(d.name, name, d.data_dir)
  else:
    from resnet_jax.data.folder_source import load_folder_split
    split = load_folder_split(name, d.data_dir)
  if d.holdout:
    split = holdout_part(split, d.holdout, train=train)
  if not len(split):
    raise ValueError(f'{split.name} has no examples')
  return split
