"""Eval protocols: view geometry, host and device views, and the metrics of a whole pass."""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from resnet_jax import eval_protocols, parallel
from resnet_jax.checkpoint import Checkpointer
from resnet_jax.config_base import base_config
from resnet_jax.data.prepare import prepare
from resnet_jax.data.transforms import ImageTransform, center_crop_box
from resnet_jax.eval_protocols import Protocol
from resnet_jax.evaluate import evaluate_workdir
from resnet_jax.train.state import eval_variables
from resnet_jax.train.trainer import create_trainer
from resnet_jax.train.steps import topk_correct
from tests.data_builders import encode, folder_config, write_image_folder
from tests.helpers import write_idx_dataset

CLASSES = {'cat': 5, 'dog': 3, 'fox': 4}


def test_unknown_protocol_names_the_valid_ones():
  with pytest.raises(ValueError,
                     match='five_crop.*center_crop, ten_crop, padded_ten_crop, multi_scale'):
    Protocol('five_crop', 16, 18, ())


def test_ten_crop_geometry_is_corners_centre_and_their_flips():
  views = Protocol('ten_crop', 16, 18, ()).views(40, 30)
  side = 16 * 30 / 18
  assert len(views) == 10 and {s for _, s, _ in views} == {16}
  assert [flip for _, _, flip in views] == [False] * 5 + [True] * 5
  boxes = [box for box, _, _ in views[:5]]
  np.testing.assert_allclose(boxes[:4], [(0, 0, side, side), (40 - side, 0, 40, side),
                                         (0, 30 - side, side, 30), (40 - side, 30 - side, 40, 30)])
  assert boxes[4] == center_crop_box(40, 30, size=16, resize=18)
  assert [box for box, _, _ in views[5:]] == boxes


def test_multi_scale_feeds_the_central_square_at_each_scale():
  views = Protocol('multi_scale', 16, 18, (12, 20, 28)).views(40, 30)
  assert [(box, side) for box, side, _ in views] == [((5, 0, 35, 30), s) for s in (12, 20, 28)]
  config = base_config()   # no scales given: the paper's, in proportion to the image size
  config.eval.protocol = 'multi_scale'
  config.data.image_size = 224
  assert Protocol.from_config(config).scales == (224, 256, 384, 480, 640)
  config.data.image_size = 64
  assert Protocol.from_config(config).scales == (64, 73, 110, 137, 183)


def test_host_views_match_the_eval_crop():
  rng = np.random.default_rng(0)
  image = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
  for fmt in ('PNG', 'JPEG'):
    data = encode(image, fmt)
    eval_crop = ImageTransform('none', 16, 3, eval_resize=18).eval(data, 'x')
    views = eval_protocols.host_views(Protocol('ten_crop', 16, 18, ()), data, 'x', 3)
    assert len(views) == 10 and all(v.shape == (16, 16, 3) for v in views)
    np.testing.assert_array_equal(views[4], eval_crop)
    np.testing.assert_array_equal(views[9], eval_crop[:, ::-1])
    scales = eval_protocols.host_views(Protocol('multi_scale', 16, 18, (12, 24)), data, 'x', 3)
    assert [v.shape for v in scales] == [(12, 12, 3), (24, 24, 3)]


def test_device_views_cut_exact_crops_and_flips():
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 16, 16, 1), dtype=np.uint8))
  views = eval_protocols.device_views(images, Protocol('ten_crop', 8, 0, ()))
  x = np.asarray(images)
  expected = [x[:, :8, :8], x[:, :8, 8:], x[:, 8:, :8], x[:, 8:, 8:], x[:, 4:12, 4:12]]
  expected += [e[:, :, ::-1] for e in expected]
  for view, e in zip(views, expected, strict=True):
    np.testing.assert_array_equal(np.asarray(view), e)
  up = eval_protocols.device_views(images, Protocol('multi_scale', 8, 0, (16, 32)))
  np.testing.assert_array_equal(np.asarray(up[0]), x)
  assert up[1].shape == (2, 32, 32, 1) and up[1].dtype == jnp.uint8


def test_padded_ten_crop_shifts_by_the_training_pad_on_host_and_device():
  protocol = Protocol('padded_ten_crop', 12, 0, (), pad=3)
  boxes = [box for box, _, _ in protocol.views(12, 12)]
  assert boxes[:5] == [(-3, -3, 9, 9), (3, -3, 15, 9), (-3, 3, 9, 15), (3, 3, 15, 15),
                       (0, 0, 12, 12)] == boxes[5:]
  image = np.random.default_rng(0).integers(1, 256, (12, 12, 3), dtype=np.uint8)
  padded = np.pad(image, ((3, 3), (3, 3), (0, 0)))   # zeros, as training's pad-crop
  expected = [padded[3 + int(y):15 + int(y), 3 + int(x):15 + int(x)] for x, y, _, _ in boxes[:5]]
  expected += [e[:, ::-1] for e in expected]
  on_device = eval_protocols.device_views(jnp.asarray(image[None]), protocol)
  on_host = eval_protocols.host_views(protocol, encode(Image.fromarray(image), 'PNG'), 'x', 3)
  for device_view, host_view, e in zip(on_device, on_host, expected, strict=True):
    np.testing.assert_array_equal(np.asarray(device_view)[0], e)
    np.testing.assert_array_equal(host_view, e)
  with pytest.raises(ValueError, match='data.pad'):
    Protocol('padded_ten_crop', 12, 0, (), pad=0)
  config = base_config()
  config.eval.protocol, config.data.augment = 'padded_ten_crop', 'inception_crop'
  with pytest.raises(ValueError, match="data.augment='cifar'"):
    Protocol.from_config(config)
  # A smaller image, resampled up: the centre view is the eval crop, its edges not darkened.
  small = encode(Image.fromarray(image), 'PNG')
  upscaled = eval_protocols.host_views(Protocol('padded_ten_crop', 20, 0, (), pad=3), small, 'x', 3)
  np.testing.assert_array_equal(upscaled[4], ImageTransform('none', 20, 3).eval(small, 'x'))
  # Where the eval crop is resized, the shift is in the network's pixels: 3 of its 12, which
  # are 18 source pixels here (shorter side 24 -> 16), so 4.5 source pixels.
  resized = Protocol('padded_ten_crop', 12, 16, (), pad=3).views(32, 24)
  assert [box for box, _, _ in resized[:5]] == [
      (2.5, -1.5, 20.5, 16.5), (11.5, -1.5, 29.5, 16.5), (2.5, 7.5, 20.5, 25.5),
      (11.5, 7.5, 29.5, 25.5), (7, 3, 25, 21)]


@pytest.fixture(scope='module')
def folder_dataset(tmp_path_factory):
  root = write_image_folder(tmp_path_factory.mktemp('images'), CLASSES, size=(40, 30))
  out = tmp_path_factory.mktemp('prepared')
  prepare(root, out, val_fraction=0.5, workers=0)
  return out


def random_state(trainer):
  """A state of random values, BN variances positive (no jitted init: slow to compile on CPU)."""
  rng = np.random.default_rng(0)

  def leaf(path, x, sharding):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      value = np.zeros(x.shape, x.dtype)
    elif jax.tree_util.keystr(path).endswith("['var']"):
      value = rng.uniform(0.5, 1.5, x.shape).astype(x.dtype)
    else:
      value = (0.1 * rng.standard_normal(x.shape)).astype(x.dtype)
    return jax.device_put(value, sharding)

  return jax.tree_util.tree_map_with_path(leaf, trainer.abstract_state,
                                          trainer.state_sharding)


def constant_logits(state, mesh, num_classes: int):
  """`state` with a zero head kernel: logits = a bias that favours the last class."""
  params = dict(state.params)
  params['head'] = {'kernel': jnp.zeros_like(params['head']['kernel']),
                    'bias': jnp.arange(num_classes, dtype=jnp.float32)}
  return state.replace(params=jax.device_put(params, parallel.replicated(mesh)))


def protocol_results(config):
  trainer, _, base = create_trainer(config, train=False)
  state = constant_logits(random_state(trainer), trainer.mesh, base.info.num_classes)
  eval_input = eval_protocols.protocol_input(config, trainer.mesh, base)
  step = eval_protocols.compile_step(trainer.model, config, trainer.mesh)
  sums = eval_protocols.evaluate_views(step, eval_variables(state), eval_input)
  return eval_protocols.summarize(sums, base.info.class_names)


def tiny_folder_config(data_dir):
  config = folder_config(data_dir, prefetch=0)
  config.model.update(name='small_resnet', width=8)
  return config


def test_a_protocol_step_finishes_before_the_next_batch_on_a_cpu_mesh(folder_dataset):
  """The steps of consecutive batches are independent programs with an all-reduce; overlapped
  on a CPU mesh they can deadlock XLA's CPU runtime (parallel.finish_on_cpu_meshes)."""
  config = tiny_folder_config(folder_dataset)
  trainer, _, base = create_trainer(config, train=False)
  assert trainer.mesh.devices.size == 8
  batch = next(iter(eval_protocols.protocol_input(config, trainer.mesh, base)))
  step = eval_protocols.compile_step(trainer.model, config, trainer.mesh)
  out = step(eval_variables(random_state(trainer)), batch)
  assert all(leaf.is_ready() for leaf in jax.tree.leaves(out))


@pytest.mark.parametrize('source', ['folder', 'idx'])
def test_protocols_equal_the_centre_crop_when_the_model_ignores_the_input(source, folder_dataset,
                                                                          tmp_path):
  if source == 'folder':   # views made on the host by grain
    config = tiny_folder_config(folder_dataset)
  else:                    # Fashion-MNIST-like 28x28 on the devices: views made there
    config = tiny_folder_config(write_idx_dataset(tmp_path, num_train=8, num_test=20))
    config.data.update(source='idx', eval_split='test', image_size=28, eval_resize=0,
                       augment='none', device_resident=True)
  config.eval.scales = (12, 20)
  results = {}
  trained_with = config.data.augment
  for protocol in eval_protocols.PROTOCOLS:
    config.eval.protocol = protocol
    config.data.augment = 'cifar' if protocol == 'padded_ten_crop' else trained_with
    results[protocol] = protocol_results(config)
  centre = results['center_crop']
  n = centre['num_examples']
  counts = np.array([c['count'] for c in centre['per_class']])
  assert counts.sum() == n == (sum(CLASSES.values()) - 6 if source == 'folder' else 20)
  assert np.array(centre['confusion_matrix']).sum() == n
  last = len(counts) - 1   # every example is predicted as the last class
  assert np.array(centre['confusion_matrix'])[:, last].sum() == n
  assert centre['eval/top1'] == pytest.approx(counts[last] / n)
  # balanced: the last class all right, every other class present all wrong
  assert centre['eval/class_mean_top1'] == pytest.approx(1 / np.count_nonzero(counts))
  for other in (results[p] for p in eval_protocols.PROTOCOLS if p != 'center_crop'):
    assert other.keys() == centre.keys()
    assert other['confusion_matrix'] == centre['confusion_matrix']
    for key in ('eval/loss', 'eval/top1', 'eval/top5', 'eval/class_mean_top1'):
      assert other[key] == pytest.approx(centre[key], rel=1e-5)


def test_eval_mode_writes_metrics_per_class_and_the_confusion_png(folder_dataset, tmp_path):
  config = tiny_folder_config(folder_dataset)
  config.eval.protocol = 'ten_crop'
  trainer, _, _ = create_trainer(config, train=False)
  ckpt = Checkpointer(tmp_path)
  ckpt.save(1, random_state(trainer), None, config)
  ckpt.wait()
  ckpt.close()
  results = evaluate_workdir(config, tmp_path)
  saved = json.loads((tmp_path / 'eval_ten_crop_latest_1.json').read_text())
  assert saved['protocol'] == 'ten_crop' and saved['step'] == 1
  assert saved['eval/top1'] == pytest.approx(results['eval/top1'])
  n = saved['num_examples']
  confusion = np.array(saved['confusion_matrix'])
  assert confusion.shape == (3, 3) and confusion.sum() == n == 6
  per_class = saved['per_class']
  assert [c['class'] for c in per_class] == saved['class_names'] == list(CLASSES)
  val_counts = json.loads((folder_dataset / 'dataset.json').read_text())['splits']['val']
  assert ([c['count'] for c in per_class] == confusion.sum(axis=1).tolist()
          == list(val_counts['class_counts'].values()))
  weighted = sum(c['top1'] * c['count'] for c in per_class) / n
  assert weighted == pytest.approx(saved['eval/top1'])
  assert np.trace(confusion) / n == pytest.approx(saved['eval/top1'])
  png = tmp_path / 'plots' / 'confusion_ten_crop_latest_1.png'
  assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  config.eval.protocol = 'center_crop'   # another protocol's results stand beside these
  evaluate_workdir(config, tmp_path)
  config.eval.protocol = 'multi_scale'   # and so do one protocol's with other settings
  for scales in ((16, 24), (16,)):
    config.eval.scales = scales
    evaluate_workdir(config, tmp_path)
  assert sorted(p.name for p in tmp_path.glob('eval_*.json')) == [
      'eval_center_crop_latest_1.json', 'eval_multi_scale-16-24_latest_1.json',
      'eval_multi_scale-16_latest_1.json', 'eval_ten_crop_latest_1.json']
  assert json.loads((tmp_path / 'eval_multi_scale-16_latest_1.json').read_text())['scales'] == [16]


def test_a_run_whose_schedule_needs_its_epoch_length_evaluates_and_restores(tmp_path, devices,
                                                                          capsys):
  """--mode=eval, predict and a distillation teacher rebuild a run's model without knowing its
  epoch length; a schedule that only that length makes valid (decays at 0.5 and 0.75 of 3
  epochs, which fall on one step at one step an epoch) is not checked against a made-up one."""
  from resnet_jax.checkpoint import write_json
  from resnet_jax.train.restore import restore_trained
  from tests.helpers import fake_config
  config = fake_config(num_steps=0, num_epochs=3)
  config.schedule.update(name='multistep', unit='fraction', boundaries=(0.5, 0.75))
  trainer, _, _ = create_trainer(config, train=False)
  ckpt = Checkpointer(tmp_path)
  ckpt.save(1, random_state(trainer), None, config)
  ckpt.wait()
  ckpt.close()
  write_json(tmp_path / 'config.json', config.to_dict())
  config.eval.protocol = 'ten_crop'   # an eval setting: not a change of the run's config
  assert 0 <= evaluate_workdir(config, tmp_path)['eval/top1'] <= 1
  printed = capsys.readouterr().out
  assert 'another config' not in printed
  assert re.search(r'protocol: ten_crop, .*eval/top1: \d+\.\d\d%', printed)   # as training prints it
  assert restore_trained(tmp_path).step == 1
  config.data.mean = (0.4,)   # eval builds its data from the config it is given: said
  evaluate_workdir(config, tmp_path)
  assert 'evaluating with another config than the run had (data.mean' in capsys.readouterr().out


def test_ten_crop_mirrors_only_where_training_flips():
  views = Protocol('ten_crop', 16, 18, (), flip=False).views(40, 30)
  assert len(views) == 5 and not any(flip for _, _, flip in views)
  config = base_config()
  config.eval.protocol = 'ten_crop'
  for augment, hflip, flips in (('inception_crop', True, True), ('inception_crop', False, False),
                                ('none', True, False)):   # 'none': training never flips
    config.data.update(augment=augment, hflip=hflip)
    assert Protocol.from_config(config).flip == flips, (augment, hflip)
  config = base_config()
  config.data.update(hflip=False, image_size=16, eval_resize=18)
  config.eval.protocol = 'ten_crop'
  assert Protocol.from_config(config).views(40, 30) == views


def test_device_views_cut_coinciding_crops_once_and_weigh_them_as_the_host_does():
  """On a square as large as the crop the five crops are one: the image and its mirror image,
  each once (all repeat five times: the same mean); a repeated scale is listed twice."""
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8))
  views = eval_protocols.device_views(images, Protocol('ten_crop', 8, 0, ()))
  assert len(views) == 2
  np.testing.assert_array_equal(np.asarray(views[1]), np.asarray(images)[:, :, ::-1])
  scales = eval_protocols.device_views(images, Protocol('multi_scale', 8, 0, (16, 16, 24)))
  assert [v.shape[1] for v in scales] == [16, 16, 24]


def test_the_confusion_trace_is_the_top1_count_even_with_ties():
  scores = jnp.array([[2.0, 2.0, 0.0],     # label 0 ties with class 1: wrong, predicted 1
                      [0.0, 3.0, 1.0],     # right
                      [1.0, 1.0, 1.0]])    # label 2 ties with all: wrong
  labels = jnp.array([0, 1, 2])
  confusion = np.asarray(eval_protocols.confusion_matrix(scores, labels, jnp.ones(3, bool)))
  assert confusion[0, 1] == 1 and confusion[1, 1] == 1 and confusion[2, 2] == 0
  assert np.trace(confusion) == float(jnp.sum(topk_correct(scores, labels, 1))) == 1


def test_a_protocol_scores_the_mean_probability_over_all_its_views():
  """Two views (two shapes: one program each) whose own top-1 disagree; the average decides."""
  class ByBrightness:   # logits [b, -b] from each image's mean brightness b
    def apply(self, variables, images, train):
      b = jnp.mean(images, axis=(1, 2, 3))
      return jnp.stack([b, -b], axis=-1) * variables['params']['scale']

  config = base_config()
  config.data.update(mean=(0.0,), std=(1.0,))
  variables = {'params': {'scale': 4.0}, 'batch_stats': {}}
  dark = np.zeros((1, 4, 4, 1), np.uint8)          # logits (0, 0): p = (0.5, 0.5)
  bright = np.full((1, 6, 6, 1), 255, np.uint8)    # logits (4, -4): p ~ (1, 0)
  batch = {'views': (dark, bright), 'label': jnp.array([1]), 'mask': jnp.array([True])}
  metrics = eval_protocols.protocol_eval_step(variables, batch, model=ByBrightness(), config=config)
  p = (0.5 + 1 / (1 + np.exp(-8.0))) / 2            # the mean probability of class 0
  np.testing.assert_allclose(float(metrics['loss']), -np.log(1 - p), rtol=1e-5)
  assert float(metrics['top1']) == 0 and float(metrics['count']) == 1
