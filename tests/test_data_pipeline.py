"""create_input end to end: grain (folders, idx, tfds), device-resident and fake inputs: shapes,
sharding, determinism, exact resume, per-process shards, one exact eval pass, worker processes."""

import json
import logging

import jax
import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter
from jax.sharding import PartitionSpec as P
from PIL import Image

from resnet_jax import parallel
from resnet_jax.data import (create, create_input, folder_format, grain_loader,
                             nvimgcodec_decode, prepare)
from resnet_jax.data.decode import BadImageError
from resnet_jax.data.device_resident import pad_crop_flip
from resnet_jax.data.transforms import ImageTransform
from tests.helpers import fake_config, mark_worker, write_idx, write_idx_dataset
from tests.data_builders import (decode_index, encode, folder_config, index_split, mock_tfds,
                                 write_image_folder, write_tiny_tfds)


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """A prepared folder: 3 classes, 24 train and 6 val images of 40x30."""
  tmp = tmp_path_factory.mktemp('folder')
  root = write_image_folder(tmp / 'root', {'hole': 10, 'stain': 10, 'ok': 10})
  prepare.prepare(root, tmp / 'prepared', val_fraction=0.2)
  return tmp / 'prepared'


def take(inp, n: int) -> list[dict[str, np.ndarray]]:
  it = iter(inp)
  batches = [jax.device_get(next(it)) for _ in range(n)]
  it.close()
  return batches


def assert_same(a: list[dict], b: list[dict]) -> None:
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def idx_config(data_dir, **data):
  c = fake_config()
  c.data.update(dict(source='idx', name='fashion_mnist', data_dir=str(data_dir), image_size=28,
                     augment='cifar', pad=2), **data)
  c.batch_size, c.eval_batch_size = 16, 16
  return c


def write_index_idx(directory, num_train: int, num_test: int):
  """idx files whose 28x28 images hold index // 256 in the top rows and index % 256 below."""
  directory.mkdir(parents=True, exist_ok=True)
  for prefix, n in (('train', num_train), ('t10k', num_test)):
    images = np.zeros((n, 28, 28), np.uint8)
    images[:, :14] = (np.arange(n) // 256)[:, None, None]
    images[:, 14:] = (np.arange(n) % 256)[:, None, None]
    write_idx(directory / f'{prefix}-images-idx3-ubyte.gz', images)
    write_idx(directory / f'{prefix}-labels-idx1-ubyte.gz', np.arange(n) % 10)
  return directory


def index_of(images: np.ndarray) -> np.ndarray:
  """Inverse of write_index_idx, robust to crops shifted by a few pixels and to flips."""
  return images[:, 7, 14, 0].astype(int) * 256 + images[:, 21, 14, 0].astype(int)


@pytest.mark.parametrize('augment', ['imagenet_scale', 'inception_crop'])
def test_folder_train_and_eval_batches(folder, augment, devices):
  c = folder_config(folder, augment=augment, vflip=True)
  mesh = parallel.create_mesh()
  train = create_input(c, mesh, train=True)
  assert train.info.num_classes == 3 and train.info.class_names == ('hole', 'ok', 'stain')
  assert train.info.image_shape == (16, 16, 3)
  assert train.num_examples == 24 and train.steps_per_epoch == 3
  batch = next(iter(train))
  assert set(batch) == {'image', 'label'}
  assert batch['image'].shape == (8, 16, 16, 3) and batch['image'].dtype == np.uint8
  assert batch['label'].shape == (8,) and batch['label'].dtype == np.int32
  for x in batch.values():
    assert x.sharding.spec == P('data') and x.sharding.mesh.shape == mesh.shape
  images = np.asarray(batch['image'])
  assert images.std() > 10 and 0 <= np.asarray(batch['label']).min() <= 2
  evaluation = create_input(c, mesh, train=False)
  batches = [jax.device_get(b) for b in evaluation]
  assert evaluation.num_examples == 6 and len(batches) == 1
  assert batches[0]['image'].shape == (16, 16, 16, 3) and batches[0]['mask'].sum() == 6


def test_same_seed_same_batches_and_exact_resume(tmp_path, devices):
  data_dir = write_idx_dataset(tmp_path, num_train=40, num_test=8)
  mesh = parallel.create_mesh()
  c = idx_config(data_dir)
  first = take(create_input(c, mesh, train=True), 5)   # 2 steps per epoch: crosses epochs
  assert_same(first, take(create_input(c, mesh, train=True), 5))
  c.seed = 1
  other = take(create_input(c, mesh, train=True), 5)
  assert not np.array_equal(other[0]['image'], first[0]['image'])
  c.seed = 0
  interrupted = create_input(c, mesh, train=True)
  take(interrupted, 3)
  state = json.loads(json.dumps(interrupted.get_state()))
  assert state == {'epoch': 1, 'position': 1}
  resumed = create_input(c, mesh, train=True)
  resumed.set_state(state)
  assert_same(take(resumed, 2), first[3:])
  with pytest.raises(ValueError, match='steps per epoch'):
    resumed.set_state({'epoch': 0, 'position': 2})


def test_every_epoch_is_a_new_permutation_of_the_split(tmp_path, devices):
  data_dir = write_index_idx(tmp_path, num_train=48, num_test=8)
  c = idx_config(data_dir, augment='none')
  seen = [index_of(b['image']) for b in take(create_input(c, parallel.create_mesh(),
                                                          train=True), 6)]
  epochs = [np.concatenate(seen[:3]), np.concatenate(seen[3:])]
  for epoch in epochs:
    assert sorted(epoch) == list(range(48))
  assert not np.array_equal(epochs[0], epochs[1])


def test_epoch_shuffle_permutes_its_shard_anew_each_epoch():
  shard = range(1, 40, 3)
  ds = grain_loader.EpochShuffle(shard, seed=7)
  epochs = [[ds[e * len(shard) + k] for k in range(len(shard))] for e in range(3)]
  assert all(sorted(epoch) == list(shard) for epoch in epochs)
  assert epochs[0] != epochs[1] != epochs[2]
  assert [grain_loader.EpochShuffle(shard, seed=7)[k] for k in range(30)] == sum(epochs, [])[:30]
  assert list(ds[2:5]) == epochs[0][2:5]


@pytest.mark.parametrize('process_count', [2, 3])
def test_process_shards_are_disjoint_and_cover_the_split(process_count):
  split = index_split(48)
  transform = ImageTransform(augment='none', size=4, channels=1)
  shards = []
  for p in range(process_count):
    load = grain_loader.LoadExample(split.records, transform, train=True, skip_bad_images=False)
    ds, steps = grain_loader.train_dataset(load, seed=0, batch_size=4, process_index=p,
                                           process_count=process_count)
    assert steps == 48 // process_count // 4
    batches = grain_loader.host_batches(ds)
    epoch = [decode_index(next(batches)['image']) for _ in range(2 * steps)]
    first, second = np.concatenate(epoch[:steps]), np.concatenate(epoch[steps:])
    assert sorted(first) == sorted(second) and len(set(first)) == len(first)
    shards.append(set(first))
  assert set().union(*shards) == set(range(48))
  assert sum(len(s) for s in shards) == 48


def test_eval_shards_count_every_example_once():
  split = index_split(50)
  transform = ImageTransform(augment='none', size=4, channels=1)
  seen, lengths = [], set()
  for p in range(3):
    load = grain_loader.LoadExample(split.records, transform, train=False, skip_bad_images=False)
    batches = list(grain_loader.host_batches(grain_loader.eval_dataset(
        load, batch_size=4, process_index=p, process_count=3)))
    lengths.add(len(batches))
    for b in batches:
      assert b['image'].shape == (4, 4, 4, 1)
      seen.extend(decode_index(b['image'])[b['mask']])
  assert lengths == {5} and sorted(seen) == list(range(50))


@pytest.mark.parametrize('device_resident', [False, True])
def test_eval_pass_counts_every_example_once(tmp_path, device_resident, devices):
  data_dir = write_index_idx(tmp_path, num_train=32, num_test=50)
  c = idx_config(data_dir, device_resident=device_resident)
  evaluation = create_input(c, parallel.create_mesh(), train=False)
  assert evaluation.num_examples == 50
  passes = []
  for _ in range(2):
    batches = [jax.device_get(b) for b in evaluation]
    assert len(batches) == 4 and all(b['mask'].dtype == bool for b in batches)
    masks = np.concatenate([b['mask'] for b in batches])
    indices = np.concatenate([index_of(b['image']) for b in batches])[masks]
    labels = np.concatenate([b['label'] for b in batches])[masks]
    assert masks.sum() == 50 and sorted(indices) == list(range(50))
    np.testing.assert_array_equal(labels, indices % 10)
    passes.append(indices)
  np.testing.assert_array_equal(*passes)


def test_tfds_source_through_create_input(tmp_path, devices):
  write_tiny_tfds(tmp_path)
  c = folder_config(tmp_path, source='tfds', name='tiny_images', augment='cifar', pad=2,
                    eval_split='test', eval_resize=0)
  c.batch_size = 8
  mesh = parallel.create_mesh()
  train = create_input(c, mesh, train=True)
  assert train.info.class_names == ('cat', 'dog', 'fox') and train.steps_per_epoch == 1
  assert next(iter(train))['image'].shape == (8, 16, 16, 3)
  assert sum(int(b['mask'].sum()) for b in create_input(c, mesh, train=False)) == 5
  with mock_tfds(num_examples=20):   # an eval pass ends in the context: no reads after it
    c.data.update(name='mnist', data_dir='', image_size=28)
    batches = list(create_input(c, mesh, train=False))
  assert [b['image'].shape for b in batches] == [(16, 28, 28, 1)] * 2
  assert sum(int(b['mask'].sum()) for b in batches) == 20


def test_workers_give_the_same_batches(folder, devices, monkeypatch):
  workers = []
  host_batches = grain_loader.host_batches
  monkeypatch.setattr(grain_loader, 'host_batches',
                      lambda ds, **kw: workers.append(kw['num_workers']) or host_batches(ds, **kw))
  mesh = parallel.create_mesh()
  c = folder_config(folder, augment='inception_crop')
  in_process = take(create_input(c, mesh, train=True), 4)
  c.data.num_workers = 2
  assert_same(take(create_input(c, mesh, train=True), 4), in_process)
  assert workers == [0, 2]   # the second input did decode in two worker processes
  resumed = create_input(c, mesh, train=True)
  resumed.set_state({'epoch': 0, 'position': 2})
  assert_same(take(resumed, 2), in_process[2:])


def test_nvimgcodec_workers_give_the_host_decoders_batches(folder, devices):
  """data.decoder='nvimgcodec' in grain workers (here on the CPU): the same train and eval
  batches as the host decoder (its crops are under twice the output size: no draft scaling)."""
  mesh = parallel.create_mesh()
  c = folder_config(folder)
  host = take(create_input(c, mesh, train=True), 2), list(create_input(c, mesh, train=False))
  c.data.update(decoder='nvimgcodec', num_workers=2)
  assert ImageTransform.from_config(c.data, 3).decoder == 'nvimgcodec'   # not the host's again
  nv = take(create_input(c, mesh, train=True), 2), list(create_input(c, mesh, train=False))
  for ours, theirs in zip(nv, host):
    assert_same(ours, theirs)


def test_each_worker_runs_its_init_and_nvimgcodec_workers_get_the_gpus(tmp_path, devices):
  """`host_batches(worker_init=...)` runs in every grain worker before it works (how
  data.decoder='nvimgcodec' deals the workers out over the GPUs; none on this CPU mesh)."""
  import functools
  import grain
  ds = grain.MapDataset.range(16).batch(2)
  it = grain_loader.host_batches(ds, num_workers=2, worker_init=functools.partial(
      mark_worker, directory=str(tmp_path)))
  try:
    assert [next(it).tolist() for _ in range(3)] == [[0, 1], [2, 3], [4, 5]]
  finally:
    it.close()
  assert sorted(f.name for f in tmp_path.iterdir()) == ['0_of_2', '1_of_2']
  mesh = parallel.create_mesh()
  assert create.decoding_gpus(mesh, 'host') is None
  assert create.decoding_gpus(mesh, 'nvimgcodec').keywords == {'gpus': ()}


def test_the_grain_input_hands_nvimgcodec_workers_their_init(folder, devices, monkeypatch):
  given = []
  host_batches = grain_loader.host_batches

  def recorded(ds, **kwargs):
    given.append(kwargs)
    return host_batches(ds, **kwargs)

  monkeypatch.setattr(grain_loader, 'host_batches', recorded)
  mesh = parallel.create_mesh()
  c = folder_config(folder)
  c.data.update(decoder='nvimgcodec', num_workers=0)
  take(create_input(c, mesh, train=True), 1)
  c.data.decoder = 'host'
  take(create_input(c, mesh, train=True), 1)
  nv, host = given
  assert nv['worker_init'].func is nvimgcodec_decode.use_gpu and host['worker_init'] is None


def write_prepared(directory, images: list[tuple[str, bytes] | bytes]):
  """A prepared dataset written record by record (so a bad file can get past prepare); a bare
  `bytes` item is written as it is: a record that is not an image record."""
  directory.mkdir(parents=True, exist_ok=True)
  writer = ArrayRecordWriter(str(directory / 'train.array_record'), 'group_size:1')
  for i, item in enumerate(images):
    writer.write(item if isinstance(item, bytes) else folder_format.encode_record(i % 2, *item))
  writer.close()
  split = {'file': 'train.array_record', 'num_examples': len(images)}
  folder_format.write_metadata(directory, {'class_names': ['a', 'b'],
                                           'splits': {'train': split, 'val': split}})
  return directory


def test_a_broken_dataset_json_or_record_is_named(tmp_path):
  from resnet_jax.data.folder_source import load_folder_split
  directory = write_prepared(tmp_path / 'ds', [('train/a/x.jpg', b'\xff\xd8')])
  writer = ArrayRecordWriter(str(directory / 'train.array_record'), 'group_size:1')
  writer.write(b'\x01')   # shorter than a record header
  writer.close()
  with pytest.raises(BadImageError, match=r'record 0 of .*train\.array_record is not an image'):
    load_folder_split('train', str(directory)).records[0]
  (directory / folder_format.METADATA_FILE).write_text('{"class_names": [')
  with pytest.raises(ValueError, match=r'dataset\.json is not valid JSON'):
    load_folder_split('train', str(directory))


def test_bad_record_is_named_from_a_worker_or_skipped(folder, tmp_path, devices, caplog):
  files = sorted((folder.parent / 'root' / 'train' / 'hole').iterdir())[:7]
  good = [(f'train/a/{f.name}', f.read_bytes()) for f in files]
  directory = write_prepared(tmp_path, good[:3] + [('train/b/bad.jpg', b'garbage')] + good[3:])
  mesh = parallel.create_mesh()
  c = folder_config(directory, num_workers=1)
  with pytest.raises(Exception, match=r'train/b/bad\.jpg \(record 3 of .*train\.array_record\)'):
    take(create_input(c, mesh, train=True), 1)
  c.data.update(num_workers=0, skip_bad_images=True)
  with caplog.at_level(logging.WARNING):
    batch = take(create_input(c, mesh, train=True), 1)[0]
    masks = [b['mask'] for b in create_input(c, mesh, train=False)]
  assert batch['image'].shape == (8, 16, 16, 3)
  assert int(np.asarray(masks[0]).sum()) == 7
  assert 'bad.jpg' in caplog.text and 'skipped' in caplog.text


def test_a_malformed_record_is_skipped_by_the_view_protocols_and_the_device_load(tmp_path):
  """skip_bad_images covers a record that is not an image record (not only an undecodable image)
  in ten_crop's host views and in the device-resident load, as in the grain loader."""
  from resnet_jax.data.device_resident import load_arrays
  from resnet_jax.data.folder_source import load_folder_split
  from resnet_jax.eval_protocols import Protocol, ViewExamples
  good = [(f'train/a/{i}.png', encode(Image.new('RGB', (20, 20), (40 * i, 0, 0)), 'PNG'))
          for i in range(4)]
  split = load_folder_split('val', str(write_prepared(tmp_path, good[:2] + [b'\x01'] + good[2:])))
  views = ViewExamples(split.records, Protocol('ten_crop', 16, 0, ()), 3, skip_bad_images=True)
  assert [bool(views(i)['mask']) for i in range(5)] == [True, True, False, True, True]
  with pytest.raises(BadImageError, match=r'record 2 of .*train\.array_record'):
    ViewExamples(split.records, Protocol('ten_crop', 16, 0, ()), 3, skip_bad_images=False)(2)
  images, _ = load_arrays(split, skip_bad_images=True)
  np.testing.assert_array_equal(images[:, 0, 0, 0], [0, 40, 80, 120])
  with pytest.raises(BadImageError, match=r'record 2 of .*train\.array_record'):
    load_arrays(split)


@pytest.mark.parametrize('decoder', ['host', 'nvimgcodec'])
def test_a_jpeg_that_fails_in_its_batch_is_named_or_replaced(tmp_path, decoder):
  """A JPEG whose header reads but whose data is cut fails when its batch is decoded: named, or
  (skip_bad_images) replaced in train by the next record and masked out in eval."""
  from resnet_jax.data.folder_source import load_folder_split
  rng = np.random.default_rng(0)
  jpegs = []
  for i in range(6):
    photo = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((64, 48))
    jpegs.append((f'train/c{i % 2}/{i}.jpg', encode(photo, 'JPEG')))
  jpegs[2] = ('train/c0/cut.jpg', jpegs[2][1][:700])
  split = load_folder_split('train', str(write_prepared(tmp_path, jpegs)))
  transform = ImageTransform(augment='inception_crop', size=16, channels=3, decoder=decoder)

  def train_batch(skip: bool) -> tuple[dict, grain_loader.LoadExample]:
    load = grain_loader.LoadExample(split.records, transform, train=True, skip_bad_images=skip)
    return load.collate([load(i, np.random.default_rng(i)) for i in range(4)]), load

  with pytest.raises(BadImageError, match='cut.jpg'):
    train_batch(skip=False)
  batch, load = train_batch(skip=True)
  assert load.skipped == 1 and batch['image'].shape == (4, 16, 16, 3)
  np.testing.assert_array_equal(batch['label'], [0, 1, 1, 1])   # record 3 (label 1) for 2
  np.testing.assert_array_equal(batch['image'], train_batch(skip=True)[0]['image'])
  load = grain_loader.LoadExample(split.records, transform, train=False, skip_bad_images=True)
  batch = load.collate([load(i) for i in (0, 1, 2, 3, -1)])
  np.testing.assert_array_equal(batch['mask'], [True, True, False, True, False])
  assert not batch['image'][2].any() and batch['image'][3].any()


def test_device_resident_batches_and_resume(tmp_path, devices):
  data_dir = write_index_idx(tmp_path, num_train=48, num_test=8)
  mesh = parallel.create_mesh()
  c = idx_config(data_dir, device_resident=True, pad=2)
  train = create_input(c, mesh, train=True)
  assert train.steps_per_epoch == 3 and train.info.image_shape == (28, 28, 1)
  first = take(train, 6)
  for b in first:
    assert b['image'].shape == (16, 28, 28, 1) and b['image'].dtype == np.uint8
    assert b['label'].dtype == np.int32
  batch = next(iter(create_input(c, mesh, train=True)))
  assert batch['image'].sharding.spec == P('data') and batch['label'].sharding.spec == P('data')
  epochs = [np.concatenate([index_of(b['image']) for b in first[e * 3:e * 3 + 3]])
            for e in range(2)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(48))
  assert not np.array_equal(epochs[0], epochs[1])
  np.testing.assert_array_equal(first[0]['label'], index_of(first[0]['image']) % 10)
  assert train.get_state() == {'epoch': 2, 'position': 0}
  resumed = create_input(c, mesh, train=True)
  resumed.set_state({'epoch': 1, 'position': 1})
  assert_same(take(resumed, 2), first[4:6])


def test_device_pad_crop_shifts_content_and_pads_with_zeros(devices):
  image = (np.arange(64, dtype=np.uint8) + 1).reshape(1, 8, 8, 1)
  images = np.repeat(image, 64, axis=0)
  out = np.asarray(pad_crop_flip(images, jax.random.key(0), size=8, pad=2, hflip=False,
                                 vflip=False))
  padded = np.pad(image[0], ((2, 2), (2, 2), (0, 0)))
  offsets = []
  for crop in out:
    matches = [(dy, dx) for dy in range(5) for dx in range(5)
               if np.array_equal(crop, padded[dy:dy + 8, dx:dx + 8])]
    assert len(matches) == 1
    offsets.append(matches[0])
  assert len(set(offsets)) > 10 and (2, 2) in offsets
  assert any((crop == 0).any() for crop in out)
  flipped = np.asarray(pad_crop_flip(images, jax.random.key(0), size=8, pad=0, hflip=True,
                                     vflip=False))
  kinds = {'same' if np.array_equal(f, image[0]) else 'flipped' for f in flipped}
  assert kinds == {'same', 'flipped'}
  assert all(np.array_equal(f, image[0]) or np.array_equal(f, image[0, :, ::-1])
             for f in flipped)


def test_fake_input(devices):
  c = fake_config()
  c.data.fake_num_examples = 100
  mesh = parallel.create_mesh()
  train = create_input(c, mesh, train=True)
  assert train.steps_per_epoch == 3 and train.info.image_shape == (16, 16, 3)
  first = take(train, 5)
  assert first[0]['image'].shape == (32, 16, 16, 3) and first[0]['image'].dtype == np.uint8
  assert_same(first[3:], first[:2]) and not np.array_equal(first[0]['image'], first[1]['image'])
  assert_same(first, take(create_input(c, mesh, train=True), 5))
  resumed = create_input(c, mesh, train=True)
  resumed.set_state(train.get_state())
  assert_same(take(resumed, 1), [first[2]])
  masks = [np.asarray(b['mask']) for b in create_input(c, mesh, train=False)]
  assert len(masks) == 2 and sum(m.sum() for m in masks) == 100
  c.data.image_size = 32
  with pytest.raises(ValueError, match='fake_image_shape'):
    create_input(c, mesh, train=True)


def test_configuration_errors(tmp_path, devices, folder):
  mesh = parallel.create_mesh()
  c = folder_config(folder, num_workers=0)
  c.batch_size = 32   # 24 training images
  with pytest.raises(ValueError, match='24 training examples .* lower --config.batch_size'):
    create_input(c, mesh, train=True)
  c = fake_config()
  c.batch_size = 12
  with pytest.raises(ValueError, match='batch_size=12 is not divisible by the number of devices'):
    create_input(c, mesh, train=True)
  c = idx_config(write_idx_dataset(tmp_path, 32, 8), device_resident=True,
                 augment='inception_crop')
  with pytest.raises(ValueError, match='device_resident supports'):
    create_input(c, mesh, train=True)
  c.data.augment = 'cifar'
  for key, value in (('eval_resize', 32), ('decoder', 'nvimgcodec')):
    bad = c.copy_and_resolve_references()
    bad.data[key] = value
    with pytest.raises(ValueError, match=f'data.{key}=.* grain pipeline'):
      create_input(bad, mesh, train=False)
  c.data.source = 'hdf5'
  with pytest.raises(ValueError, match="unknown data.source 'hdf5'"):
    create_input(c, mesh, train=True)
