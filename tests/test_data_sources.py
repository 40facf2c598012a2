"""Sources: idx files, tfds (a TF-free ArrayRecord build and mock_data), prepared image folders,
and every bad input: corrupt files, empty classes, missing directories, unprepared datasets."""

import gzip
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

from resnet_jax.data import folder_format, grain_loader, prepare
from resnet_jax.data.decode import BadImageError, decode_array
from resnet_jax.data.folder_source import load_folder_split
from resnet_jax.data.idx_source import FASHION_MNIST_CLASSES, load_idx_split, read_idx
from resnet_jax.data.sources import load_split
from resnet_jax.data.transforms import ImageTransform
from resnet_jax.data.tfds_source import TfdsRecords, load_tfds_split
from tests.helpers import write_idx_dataset
from tests.data_builders import folder_config, mock_tfds, write_image_folder, write_tiny_tfds

REAL_FASHION_MNIST = Path('/usr/share/datasets/fashion-mnist')


def test_idx_split_gzipped_and_plain(tmp_path):
  write_idx_dataset(tmp_path, num_train=20, num_test=7)
  split = load_idx_split('fashion_mnist', 'train', str(tmp_path))
  assert len(split) == 20 and split.channels == 1
  assert split.class_names == FASHION_MNIST_CLASSES
  record = split.records[3]
  assert record['image'].shape == (28, 28, 1) and 0 <= record['label'] < 10
  for name in ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'):   # un-gzip the test split
    (tmp_path / name).write_bytes(gzip.decompress((tmp_path / f'{name}.gz').read_bytes()))
    (tmp_path / f'{name}.gz').unlink()
  test = load_idx_split('mnist', 'test', str(tmp_path))
  assert len(test) == 7 and test.class_names == tuple('0123456789')


def test_idx_bad_inputs_name_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'missing')):
    load_idx_split('mnist', 'train', str(tmp_path / 'missing'))
  with pytest.raises(FileNotFoundError, match='train images'):
    load_idx_split('mnist', 'train', str(tmp_path))
  write_idx_dataset(tmp_path, num_train=5, num_test=5)
  path = tmp_path / 'train-images-idx3-ubyte.gz'
  path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-10]))
  with pytest.raises(ValueError, match='truncated'):
    read_idx(path)
  path.write_bytes(gzip.compress(b'\0\0\x08\x03\0\0'))   # a 3-d header cut in its first size
  with pytest.raises(ValueError, match=f'{path}: the header .* cut short'):
    read_idx(path)
  path.write_bytes(gzip.compress(b'\0\0\x08\x01\0\0\0\x01\x07')[:-6])
  with pytest.raises(ValueError, match=f'{path}: not a readable gzip file'):
    read_idx(path)


@pytest.mark.skipif(not REAL_FASHION_MNIST.is_dir(), reason='Fashion-MNIST files not installed')
def test_real_fashion_mnist_idx_files():
  train = load_idx_split('fashion_mnist', 'train', str(REAL_FASHION_MNIST))
  test = load_idx_split('fashion_mnist', 'test', '')   # the default directory
  assert (len(train), len(test)) == (60000, 10000)
  labels = train.records.labels
  assert labels.min() == 0 and labels.max() == 9 and len(np.unique(labels)) == 10
  assert train.records.images.shape == (60000, 28, 28, 1)
  assert train.class_names[0] == 'T-shirt/top' and train.class_names[9] == 'Ankle boot'


def test_tfds_array_record_dataset_without_tensorflow(tmp_path):
  write_tiny_tfds(tmp_path)
  split = load_tfds_split('tiny_images', 'train', str(tmp_path))
  assert len(split) == 12 and split.class_names == ('cat', 'dog', 'fox') and split.channels == 3
  for i in range(len(split)):
    record = split.records[i]
    image = decode_array(record['image'], 3, record['key'])
    assert record['key'] == f'tiny_images/train[{i}]'
    assert image.shape == (20 + image[0, 0, 0], 24, 3)   # example i is (20 + i) x 24
    assert record['label'] == image[0, 0, 0] % 3
  assert len(load_tfds_split('tiny_images', 'train[:50%]', str(tmp_path))) == 6


def test_a_corrupt_tfds_record_is_named_and_can_be_skipped(tmp_path):
  write_tiny_tfds(tmp_path)
  source = load_tfds_split('tiny_images', 'train', str(tmp_path)).records.source
  records = TfdsRecords([source[0], b'\x0a\xff\xff\xff\xff', b''], 'tiny_images/train')
  for index in (1, 2):   # not a protocol buffer; an Example without the features
    with pytest.raises(BadImageError, match=fr'tiny_images/train\[{index}\]: not a tf.Example'):
      records[index]
  load = grain_loader.LoadExample(records, ImageTransform(augment='none', size=16, channels=3),
                                  train=False, skip_bad_images=True)
  np.testing.assert_array_equal(load.collate([load(i) for i in range(3)])['mask'],
                                [True, False, False])


def test_tfds_holdout_takes_the_last_examples(tmp_path):
  write_tiny_tfds(tmp_path)
  c = folder_config(tmp_path, source='tfds', name='tiny_images', holdout=4)
  train, held = load_split(c.data, train=True), load_split(c.data, train=False)
  assert (len(train), len(held)) == (8, 4)
  full = load_tfds_split('tiny_images', 'train', str(tmp_path))
  assert held.records[0]['image'] == full.records[8]['image']
  c.data.holdout = 12
  with pytest.raises(ValueError, match='holdout'):
    load_split(c.data, train=True)


@pytest.mark.parametrize('name, channels', [('mnist', 1), ('cifar10', 3)])
def test_tfds_catalog_datasets_with_mock_data(name, channels):
  with mock_tfds(num_examples=6):
    split = load_tfds_split(name, 'train', '')
    assert len(split) == 6 and split.channels == channels and len(split.class_names) == 10
    record = split.records[2]
    assert isinstance(record['image'], bytes) and 0 <= record['label'] < 10
    assert decode_array(record['image'], channels, record['key']).shape[-1] == channels


def test_tfds_unprepared_and_unknown_names(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    load_tfds_split('cifar100', 'train', str(tmp_path))
  for part in ("'cifar100'", str(tmp_path), 'tfds build cifar100', "'.[prepare]'",
               '--file_format=array_record'):
    assert part in str(e.value)
  with pytest.raises(FileNotFoundError, match='manual_dir'):
    load_tfds_split('imagenet2012', 'train', str(tmp_path))
  with pytest.raises(FileNotFoundError, match="'no_such_dataset'.*neither"):
    load_tfds_split('no_such_dataset', 'train', str(tmp_path))


def test_prepare_with_a_val_folder(tmp_path):
  root = write_image_folder(tmp_path / 'root', {'hole': 4, 'stain': 3})
  write_image_folder(tmp_path / 'root', {'hole': 2, 'stain': 1}, split='val', seed=1)
  metadata = prepare.prepare(root, tmp_path / 'out')
  assert metadata['class_names'] == ['hole', 'stain']
  assert metadata['splits']['train']['num_examples'] == 7
  assert metadata['splits']['val']['class_counts'] == {'hole': 2, 'stain': 1}
  on_disk = json.loads((tmp_path / 'out' / folder_format.METADATA_FILE).read_text())
  assert on_disk['splits']['val']['num_examples'] == 3
  val = load_folder_split('val', str(tmp_path / 'out'))
  keys = sorted(val.records[i]['key'].split(' ')[0] for i in range(len(val)))
  assert keys == ['val/hole/0.jpg', 'val/hole/1.jpg', 'val/stain/0.jpg']
  for i in range(len(val)):
    record = val.records[i]
    assert record['label'] == (0 if '/hole/' in record['key'] else 1)
    assert decode_array(record['image'], 3, record['key']).shape == (30, 40, 3)


def test_prepare_splits_a_deterministic_fraction(tmp_path):
  root = write_image_folder(tmp_path / 'root', {'a': 10, 'b': 5, 'c': 1})
  first = prepare.prepare(root, tmp_path / 'one', val_fraction=0.2)
  second = prepare.prepare(root, tmp_path / 'two', val_fraction=0.2, workers=2)
  assert first['splits']['val']['class_counts'] == {'a': 2, 'b': 1, 'c': 0}
  assert first['splits']['train']['class_counts'] == {'a': 8, 'b': 4, 'c': 1}
  assert second['splits'] == first['splits']
  for split in ('train', 'val'):
    assert ((tmp_path / 'one' / f'{split}.array_record').read_bytes()
            == (tmp_path / 'two' / f'{split}.array_record').read_bytes())


def test_a_folder_of_class_folders_is_split_by_the_fraction(tmp_path):
  root = write_image_folder(tmp_path / 'root', {'a': 10, 'b': 5})
  splits = prepare.prepare(root / 'train', tmp_path / 'out', val_fraction=0.2)['splits']
  assert splits['train']['class_counts'] == {'a': 8, 'b': 4}
  assert splits['val']['class_counts'] == {'a': 2, 'b': 1}
  assert load_folder_split('train', str(tmp_path / 'out')).records[0]['key'].startswith(('a/', 'b/'))


def test_a_large_val_fraction_keeps_an_image_of_each_class_for_train(tmp_path):
  root = write_image_folder(tmp_path / 'root', {'a': 4, 'b': 1})
  splits = prepare.prepare(root, tmp_path / 'out', val_fraction=0.8)['splits']
  assert splits['val']['class_counts'] == {'a': 3, 'b': 0}
  assert splits['train']['class_counts'] == {'a': 1, 'b': 1}


def test_prepare_shrinks_large_images(tmp_path):
  root = write_image_folder(tmp_path / 'root', {'a': 3}, size=(80, 60))
  prepare.prepare(root, tmp_path / 'out', val_fraction=0, image_size_max=30)
  split = load_folder_split('train', str(tmp_path / 'out'))
  shapes = {decode_array(split.records[i]['image'], 3, '').shape for i in range(3)}
  assert shapes == {(30, 40, 3)}


def test_prepare_names_a_corrupt_or_truncated_file(tmp_path):
  root = write_image_folder(tmp_path / 'root', {'a': 3, 'b': 3})
  (root / 'train' / 'b' / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 this is not a jpeg')
  with pytest.raises(BadImageError, match=r'corrupt\.jpg.*\n.*--skip-bad-images'):
    prepare.prepare(root, tmp_path / 'out')
  assert not list((tmp_path / 'out').glob('*.tmp'))   # the half-written split is removed
  (root / 'train' / 'b' / 'corrupt.jpg').unlink()
  good = (root / 'train' / 'a' / '0.jpg').read_bytes()
  (root / 'train' / 'a' / 'truncated.jpg').write_bytes(good[:len(good) // 2])
  with pytest.raises(BadImageError, match=r'truncated\.jpg'):
    prepare.prepare(root, tmp_path / 'out', workers=2)
  assert not (tmp_path / 'out' / folder_format.METADATA_FILE).exists()


def test_prepare_skips_and_counts_bad_files(tmp_path, caplog):
  root = write_image_folder(tmp_path / 'root', {'a': 3, 'b': 3})
  (root / 'train' / 'b' / 'corrupt.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
  (root / 'train' / 'a' / 'notes.txt').write_text('not an image, and not counted')
  with caplog.at_level(logging.WARNING):
    metadata = prepare.prepare(root, tmp_path / 'out', val_fraction=0, skip_bad_images=True)
  train = metadata['splits']['train']
  assert train['num_examples'] == 6
  assert [Path(s['file']).name for s in train['skipped']] == ['corrupt.png']
  assert 'corrupt.png' in caplog.text


def test_prepare_refuses_empty_classes_and_missing_folders(tmp_path, capsys):
  root = write_image_folder(tmp_path / 'root', {'a': 2})
  (root / 'train' / 'empty').mkdir()
  with pytest.raises(ValueError, match=r'class folder .*empty has no image files'):
    prepare.prepare(root, tmp_path / 'out')
  with pytest.raises(FileNotFoundError, match='nowhere'):
    prepare.prepare(tmp_path / 'nowhere', tmp_path / 'out')
  with pytest.raises(FileNotFoundError, match=r'only_val/train'):
    write_image_folder(tmp_path / 'only_val', {'a': 1}, split='val')
    prepare.prepare(tmp_path / 'only_val', tmp_path / 'out')
  write_image_folder(tmp_path / 'odd', {'a': 1})
  write_image_folder(tmp_path / 'odd', {'zebra': 1}, split='val')
  with pytest.raises(ValueError, match='zebra'):
    prepare.prepare(tmp_path / 'odd', tmp_path / 'out')
  assert prepare.main(['--image-folder', str(tmp_path / 'nowhere'), '--out', 'x']) == 1
  assert 'nowhere' in capsys.readouterr().err


def test_prepare_cli(tmp_path, capsys):
  root = write_image_folder(tmp_path / 'root', {'a': 3, 'b': 2})
  assert prepare.main(['--image-folder', str(root), '--out', str(tmp_path / 'out'),
                       '--val-fraction', '0.3', '--workers', '0']) == 0
  out = capsys.readouterr().out
  assert 'train: 3 images' in out and 'val: 2 images' in out and 'data_dir=' in out


def test_prepare_takes_file_names_that_are_not_utf8(tmp_path):
  """A Latin-1 class folder and file name (from an old archive) are prepared; the class name and
  the record's key show the bytes that are not UTF-8 as \\xNN."""
  root = write_image_folder(tmp_path / 'root', {'tea': 3, 'cafe': 3})
  os.rename(os.fsencode(root / 'train' / 'cafe'), os.fsencode(root / 'train') + b'/caf\xe9')
  os.rename(os.fsencode(root / 'train' / 'tea' / '0.jpg'),
            os.fsencode(root / 'train' / 'tea') + b'/th\xe9.jpg')
  metadata = prepare.prepare(root, tmp_path / 'out', val_fraction=0.0)
  assert metadata['class_names'] == ['caf\\xe9', 'tea']
  train = load_folder_split('train', str(tmp_path / 'out'))
  keys = [train.records[i]['key'].split(' ')[0] for i in range(len(train))]
  assert 'train/tea/th\\xe9.jpg' in keys and len(keys) == 6


def test_a_cut_short_array_record_file_is_named(tmp_path):
  root = write_image_folder(tmp_path / 'root', {'a': 3})
  prepare.prepare(root, tmp_path / 'out', val_fraction=0.0)
  path = tmp_path / 'out' / 'train.array_record'
  path.write_bytes(path.read_bytes()[:100])
  with pytest.raises(ValueError, match=f'{path} is not a readable ArrayRecord file'):
    load_folder_split('train', str(tmp_path / 'out'))


def test_folder_source_bad_inputs(tmp_path):
  with pytest.raises(FileNotFoundError, match='does not exist.*prepare'):
    load_folder_split('train', str(tmp_path / 'missing'))
  with pytest.raises(FileNotFoundError,
                     match='not a prepared.*--out DIR, then --config.data.data_dir'):
    load_folder_split('train', str(tmp_path))
  root = write_image_folder(tmp_path / 'root', {'a': 3})
  prepare.prepare(root, tmp_path / 'out', val_fraction=0.4)
  with pytest.raises(ValueError, match=r"split 'test' is not in .*train, val"):
    load_folder_split('test', str(tmp_path / 'out'))
  metadata_file = tmp_path / 'out' / folder_format.METADATA_FILE
  metadata = json.loads(metadata_file.read_text())
  metadata_file.write_text(json.dumps({k: v for k, v in metadata.items() if k != 'splits'}))
  with pytest.raises(ValueError, match=f'{metadata_file} lacks splits'):
    load_folder_split('train', str(tmp_path / 'out'))
  metadata_file.write_text('[]')
  with pytest.raises(ValueError, match="format 'list'"):
    load_folder_split('train', str(tmp_path / 'out'))
  with pytest.raises(ValueError, match='data_dir'):
    load_folder_split('train', '')
