"""The layer-response tool (the paper's Fig. 7): which layers, their std against a direct
computation, and its command line."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import data, parallel
from resnet_jax.analysis import responses
from resnet_jax.checkpoint import Checkpointer, write_json
from resnet_jax.data.device_ops import prepare_images
from resnet_jax.models.registry import create_model
from resnet_jax.train.trainer import create_trainer
from tests.helpers import fake_config, write_idx_dataset
from tests.test_evaluate import random_state


def params_of(name: str, **options) -> dict:
  model = create_model(name, num_classes=10, **options)
  shape = (1, 32, 32, 3) if name.startswith('cifar') else (1, 224, 224, 3)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
  return variables['params']


def test_response_layers_are_the_3x3_bns_in_depth_order():
  layers = responses.response_layers(params_of('cifar_resnet20', shortcut='B'))
  blocks = [f'stage{s}_block{b}' for s in (1, 2, 3) for b in (1, 2, 3)]
  assert layers == [('stem_bn',)] + [(blk, bn) for blk in blocks for bn in ('bn1', 'bn2')]
  # ResNet-50: the 3x3 of each bottleneck; neither the 7x7 stem nor 1x1 convs or projections
  assert responses.response_layers(params_of('resnet50')) == [
      (f'stage{s}_block{b}', 'bn2') for s, n in zip((1, 2, 3, 4), (3, 4, 6, 3))
      for b in range(1, n + 1)]


def make_run(workdir, model: str = 'small_resnet', eval_examples: int = 256, data_dir=None):
  """A run directory holding a checkpoint of random weights (BN statistics included), on fake
  data or on the idx dataset in `data_dir`."""
  config = fake_config(eval_batch_size=16)
  config.model.name = model
  config.data.fake_num_examples = eval_examples
  if data_dir:
    config.data.update(source='idx', name='fashion_mnist', data_dir=str(data_dir), image_size=28,
                       mean=(0.3,), std=(0.3,))
  trainer, _, _ = create_trainer(config, train=False)
  state = random_state(trainer)
  ckpt = Checkpointer(workdir)
  ckpt.save(3, state, None, config)
  ckpt.wait()
  ckpt.close()
  write_json(workdir / 'config.json', config.to_dict())
  return config, jax.device_get(state)


def test_the_first_layers_std_matches_a_direct_computation(tmp_path, devices):
  # 20 eval examples in batches of 16: the last batch is padded, its padding must not count
  config, state = make_run(tmp_path, eval_examples=20)
  stds = responses.run_responses(tmp_path)
  assert len(stds) == 7 and all(s > 0 for s in stds)   # the stem and 2 per block of 3

  batches = data.create_input(config, parallel.create_mesh(), train=False)
  images = np.concatenate([np.asarray(b['image'])[np.asarray(b['mask'])] for b in batches])
  assert len(images) == 20
  x = prepare_images(jnp.asarray(images), None, train=False, data_config=config.data,
                     dtype=jnp.float32)
  y = jax.lax.conv_general_dilated(x, state.params['stem_conv']['kernel'], (1, 1),
                                   ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  bn, stats = state.params['stem_bn'], state.batch_stats['stem_bn']
  y = (y - stats['mean']) / np.sqrt(stats['var'] + 1e-5) * bn['scale'] + bn['bias']
  np.testing.assert_allclose(stds[0], np.std(np.asarray(y, np.float64)), rtol=1e-4)


def test_cli_writes_table_and_plot_and_names_a_bad_run(tmp_path, capsys, devices):
  make_run(tmp_path / 'a', model='small_plain')
  make_run(tmp_path / 'b')
  out = tmp_path / 'out'
  assert responses.main([str(tmp_path / 'a'), str(tmp_path / 'b'), f'--out={out}']) == 0
  table = json.loads((out / 'responses.json').read_text())
  assert list(table) == ['a', 'b'] and [len(v) for v in table.values()] == [7, 7]
  assert (out / 'responses.png').read_bytes()[:4] == b'\x89PNG'
  assert 'a: 7 layers' in capsys.readouterr().out
  assert responses.main([str(tmp_path / 'nowhere'), f'--out={out}']) == 1
  assert f'{tmp_path / "nowhere" / "config.json"} not found' in capsys.readouterr().err


def test_a_run_whose_dataset_moved_is_named_and_read_from_data_dir(tmp_path, capsys, devices):
  write_idx_dataset(tmp_path / 'data', num_train=8, num_test=24)
  make_run(tmp_path / 'run', data_dir=tmp_path / 'data')
  (tmp_path / 'data').rename(tmp_path / 'moved')
  out = tmp_path / 'out'
  assert responses.main([str(tmp_path / 'run'), f'--out={out}']) == 1
  assert str(tmp_path / 'data') in capsys.readouterr().err
  assert responses.main([str(tmp_path / 'run'), f'--out={out}',
                         f'--data_dir={tmp_path / "moved"}']) == 0
  assert len(json.loads((out / 'responses.json').read_text())['run']) == 7
