"""The gradient-flow tool: per-block norms against a direct `jax.grad`, and its command line."""

import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax.analysis import gradients
from resnet_jax.data.device_ops import prepare_images
from resnet_jax.train.trainer import create_model_from_config
from tests.fast_keys import rbg_keys  # noqa: F401  (a fixture)


def test_block_names_in_depth_order():
  params = {f'stage{i}_block{j}': {} for i, j in ((2, 1), (1, 10), (1, 2), (1, 1))}
  params.update(stem_conv={}, head={})
  assert gradients.block_names(params) == ['stage1_block1', 'stage1_block2', 'stage1_block10',
                                           'stage2_block1']


def test_block_norm_matches_direct_grad():
  config = gradients.analysis_config('small_resnet', 'fake', batch_size=8)
  model = create_model_from_config(config, num_classes=10)
  # The 'rbg' key compiles the initialisation in a third of threefry's time on CPU.
  variables = jax.jit(model.init, static_argnames='train')(
      jax.random.key(0, impl='rbg'), jnp.zeros((1, 32, 32, 3)), train=False)
  state = SimpleNamespace(params=variables['params'], batch_stats=variables['batch_stats'])
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.integers(0, 256, (8, 32, 32, 3)), jnp.uint8),
           'label': jnp.asarray(rng.integers(0, 10, (8,)), jnp.int32)}
  norms = gradients.block_grad_norms(model, config)(state, batch)
  assert list(norms) == ['stage1_block1', 'stage2_block1', 'stage3_block1']

  block = 'stage2_block1'   # the one with a projection shortcut
  images = prepare_images(batch['image'], None, train=False, data_config=config.data,
                          dtype=jnp.float32)

  def loss_of_block(block_params):
    params = {**state.params, block: block_params}
    logits, _ = model.apply({'params': params, 'batch_stats': state.batch_stats}, images,
                            train=True, mutable=['batch_stats'])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch['label']).mean()

  grad = jax.jit(jax.grad(loss_of_block))(state.params[block])
  direct = np.sqrt(sum(np.sum(np.square(g)) for g in jax.tree.leaves(grad)))
  assert direct > 0
  np.testing.assert_allclose(norms[block], direct, rtol=1e-5)


@pytest.mark.usefixtures('rbg_keys')
def test_cli_writes_table_and_plot(tmp_path, capsys):
  models = ['small_plain', 'small_resnet']
  assert gradients.main([*(f'--model={m}' for m in models), '--steps=0', '--batch_size=8',
                         f'--out={tmp_path}']) == 0
  table = json.loads((tmp_path / 'gradients.json').read_text())
  assert list(table) == models
  for model in models:
    norms = table[model]['0']
    assert list(norms) == ['stage1_block1', 'stage2_block1', 'stage3_block1']
    assert all(np.isfinite(v) and v > 0 for v in norms.values())
  assert table['small_plain']['0'] != table['small_resnet']['0']
  assert (tmp_path / 'gradients.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  assert f'wrote {tmp_path / "gradients.json"}' in capsys.readouterr().out


def test_the_rate_at_a_step_does_not_depend_on_the_last_step_measured():
  """The recipe's multistep boundaries are fractions of the run, whose length is the last
  measured step: the tool holds the peak rate instead."""
  from resnet_jax.train import optim
  config = gradients.analysis_config('cifar_resnet20', 'fashion_mnist', batch_size=8)
  rates = [float(optim.create_schedule(config, steps_per_epoch=100, total_steps=n)(2))
           for n in (3, 500)]
  assert rates == [optim.peak_learning_rate(config)] * 2
