"""Forward passes of each family (small instances) in float32 and bfloat16, and initialisation.

Inits run as one jitted program with an 'rbg' key: threefry compiles slowly on CPU. Big nets are
only traced (`jax.eval_shape`).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models

CASES = {   # name -> (input shape, options): one instance per family, kept small
    'small_resnet': ((32, 32, 3), dict(width=8)),
    'cifar_resnet20': ((28, 28, 1), dict(num_classes=7, in_channels=1, bn_group_size=2)),
    'resnet18': ((64, 64, 3), dict(width=8, num_classes=5)),
}
BATCH = 4


@functools.cache
def initialised(name, **extra):
  shape, options = CASES[name]
  model = models.create_model(name, **options, **extra)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(BATCH, *shape)), jnp.float32)
  variables = jax.jit(lambda x: model.init(jax.random.key(0, impl='rbg'), x, train=False))(x)
  return model, variables, x


@pytest.mark.parametrize('name', list(CASES))
def test_forward_float32_and_bfloat16(name):
  model, variables, x = initialised(name)
  model16 = model.clone(dtype=jnp.bfloat16)   # same float32 params, bfloat16 compute

  @jax.jit   # one program: compiling on CPU costs more than running
  def run(variables, x):
    train = lambda m: m.apply(variables, x, train=True, mutable=['batch_stats'])
    return train(model), train(model16), model.apply(variables, x, train=False)

  (logits, updates), (logits16, updates16), eval_logits = run(variables, x)
  num_classes = CASES[name][1].get('num_classes', 10)
  for out in (logits, logits16):
    assert out.shape == (BATCH, num_classes) and out.dtype == jnp.float32
    assert np.isfinite(out).all()
  scale = float(jnp.abs(logits).max())
  np.testing.assert_allclose(logits16, logits, atol=0.1 * scale)
  # Train mode moves the running statistics (kept in float32); eval mode uses them.
  for new in (updates['batch_stats'], updates16['batch_stats']):
    changed = jax.tree.map(lambda a, b: bool((a != b).any()), new, variables['batch_stats'])
    assert all(jax.tree.leaves(changed))
    assert {leaf.dtype for leaf in jax.tree.leaves(new)} == {jnp.dtype(jnp.float32)}
  assert eval_logits.shape == logits.shape and np.isfinite(eval_logits).all()


def test_initialisation():
  model, variables, _ = initialised('cifar_resnet20')
  kernel = variables['params']['stage3_block3']['conv2']['kernel']   # 3x3, 64 -> 64
  assert float(jnp.std(kernel)) == pytest.approx(np.sqrt(2 / (3 * 3 * 64)), rel=0.05)
  bns = [v for k, v in variables['params'].items() if k == 'stem_bn'] + [
      b for block in variables['params'].values() for k, b in block.items() if k.startswith('bn')]
  assert len(bns) == 1 + 9 * 2
  assert all((bn['scale'] == 1).all() and (bn['bias'] == 0).all() for bn in bns)
  stats = jax.tree_util.tree_leaves_with_path(variables['batch_stats'])
  assert all((v == (1 if 'var' in jax.tree_util.keystr(k) else 0)).all() for k, v in stats)


def test_zero_init_residual_zeroes_every_last_bn_scale():
  _, variables, _ = initialised('small_resnet', zero_init_residual=True)
  blocks = {k: v for k, v in variables['params'].items() if '_block' in k}
  assert len(blocks) == 3
  for block in blocks.values():
    assert not block['bn2']['scale'].any()
    assert (block['bn1']['scale'] == 1).all()
  assert all((v['bn']['scale'] == 1).all() for b in blocks.values() for k, v in b.items()
             if k == 'shortcut')


@pytest.mark.parametrize('name', ['resnet50', 'plain101', 'cifar_resnet110'])
def test_big_nets_compute_in_bfloat16_with_float32_params_and_logits(name):
  model = models.create_model(name, dtype='bfloat16', variant='v1')
  x = jnp.zeros((2, *models.input_shape(name)), jnp.float32)

  def run():
    variables = model.init(jax.random.key(0), x, train=False)
    out, state = model.apply(variables, x, train=True, capture_intermediates=True,
                             mutable=['batch_stats', 'intermediates'])
    return variables, out, state

  variables, logits, state = jax.eval_shape(run)
  assert logits.shape == (2, models.create_model(name).num_classes)
  assert logits.dtype == jnp.float32
  assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  blocks = {k: v for k, v in state['intermediates'].items() if '_block' in k}
  assert {v['__call__'][0].dtype for v in blocks.values()} == {jnp.dtype(jnp.bfloat16)}
  last = blocks[max(blocks, key=lambda k: tuple(map(int, k[5:].split('_block'))))]
  assert last['__call__'][0].shape[1:3] == ((7, 7) if name != 'cifar_resnet110' else (8, 8))


def test_bn_momentum_and_epsilon_reach_every_batch_norm():
  from flax import linen as nn
  from resnet_jax.models.layers import BatchNorm
  model, variables, x = initialised('cifar_resnet20', bn_momentum=0.5, bn_epsilon=0.25)
  seen = []

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, BatchNorm):
      seen.append((context.module.momentum, context.module.epsilon))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    model.apply(variables, x, train=True, mutable=['batch_stats'])
  assert len(seen) == 19 and set(seen) == {(0.5, 0.25)}   # ResNet-20: 19 convs, each with a BN
