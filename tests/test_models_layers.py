"""BatchNorm (ghost batches, dtypes, sharding), the shortcuts and the blocks, on small inputs."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from resnet_jax.models import layers
from resnet_jax.models.blocks import BasicBlock, BottleneckBlock, Shortcut
from resnet_jax.models.layers import BatchNorm, conv_kernel_init, pad_channels, zero_pad_shortcut


def random(shape, seed=0, dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).normal(1.0, 2.0, shape), dtype)


def init(module, x, **kwargs):
  """`module.init` as one program, with an 'rbg' key: threefry compiles slowly on CPU."""
  return jax.jit(lambda x: module.init(jax.random.key(0, impl='rbg'), x, **kwargs))(x)


def apply(module, variables, x, **kwargs):
  return jax.jit(lambda v, x: module.apply(v, x, **kwargs))(variables, x)


def train_bn(module, x, variables=None):
  """(output, updated batch_stats, variables) of a BN in training mode."""
  variables = variables or init(module, x, use_running_average=False)
  y, updates = apply(module, variables, x, use_running_average=False, mutable=['batch_stats'])
  return y, updates['batch_stats'], variables


def test_bn_with_the_whole_batch_equals_flax_batchnorm():
  x = random((8, 5, 5, 6))
  ours, flax_bn = BatchNorm(momentum=0.8), nn.BatchNorm(momentum=0.8)
  y, stats, variables = train_bn(ours, x)
  variables = jax.tree.map(lambda v: v + random(v.shape, 1), variables)   # non-trivial params
  y, stats, _ = train_bn(ours, x, variables)
  y_ref, stats_ref, _ = train_bn(flax_bn, x, variables)
  assert jax.tree.structure(variables) == jax.tree.structure(
      init(flax_bn, x, use_running_average=False))
  np.testing.assert_allclose(y, y_ref, atol=1e-5)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5), stats, stats_ref)
  assert np.allclose(train_bn(BatchNorm(group_size=8), x, variables)[0], y, atol=1e-6)
  y_eval = apply(ours, variables, x, use_running_average=True)
  np.testing.assert_allclose(y_eval, apply(flax_bn, variables, x, use_running_average=True),
                             atol=1e-5)


def test_ghost_bn_equals_plain_bn_on_each_group():
  x = random((12, 3, 3, 4))
  y, stats, variables = train_bn(BatchNorm(group_size=4), x)
  groups = [train_bn(BatchNorm(), x[i:i + 4], variables)[:2] for i in range(0, 12, 4)]
  np.testing.assert_allclose(y, jnp.concatenate([g[0] for g in groups]), atol=1e-5)
  # The running statistics move towards the mean of the group statistics.
  for key in ('mean', 'var'):
    np.testing.assert_allclose(stats[key], np.mean([g[1][key] for g in groups], axis=0),
                               rtol=1e-5)
  with pytest.raises(ValueError, match='not a multiple of the BN group size 5'):
    train_bn(BatchNorm(group_size=5), x)


def test_bn_dtypes_and_first_step():
  x = random((8, 4, 4, 3), dtype=jnp.bfloat16)
  bn = BatchNorm(dtype=jnp.bfloat16, momentum=0.9)
  y, stats, variables = train_bn(bn, x)
  assert y.dtype == jnp.bfloat16
  assert {v.dtype for v in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert {v.dtype for v in jax.tree.leaves(stats)} == {jnp.dtype(jnp.float32)}
  x32 = x.astype(jnp.float32)
  np.testing.assert_allclose(stats['mean'], 0.1 * x32.mean((0, 1, 2)), rtol=1e-5)
  np.testing.assert_allclose(stats['var'], 0.9 + 0.1 * x32.var((0, 1, 2)), rtol=1e-5)
  assert float(jnp.abs(y.astype(jnp.float32).mean((0, 1, 2))).max()) < 0.02
  assert apply(BatchNorm(), variables, x32, use_running_average=True).dtype == jnp.float32


def test_ghost_bn_sharded_over_the_mesh_equals_unsharded(devices):
  mesh = Mesh(np.array(devices), ('data',))
  x = random((16, 3, 3, 4))
  for group_size in (None, 4):
    bn = BatchNorm(group_size=group_size)
    variables = init(bn, x, use_running_average=False)
    step = jax.jit(lambda v, x: bn.apply(v, x, use_running_average=False,
                                         mutable=['batch_stats']))
    y, stats = step(variables, jax.device_put(x, NamedSharding(mesh, P('data'))))
    y_ref, stats_ref = step(variables, x)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5), stats, stats_ref)


def test_option_a_subsamples_and_zero_pads():
  x = random((2, 8, 8, 16))
  expected = jnp.concatenate([x[:, ::2, ::2, :], jnp.zeros((2, 4, 4, 16))], axis=-1)
  np.testing.assert_array_equal(zero_pad_shortcut(x, 32, 2), expected)
  np.testing.assert_array_equal(zero_pad_shortcut(x, 32, 2), pad_channels(x[:, ::2, ::2, :], 32))
  np.testing.assert_array_equal(zero_pad_shortcut(x, 64, 1)[..., :16], x)   # stride 1, 16 -> 64
  assert not zero_pad_shortcut(x, 64, 1)[..., 16:].any()
  shortcut = Shortcut(32, 2, 'A', nn.Conv, BatchNorm)
  variables = init(shortcut, x)
  assert variables == {}
  np.testing.assert_array_equal(apply(shortcut, variables, x), expected)
  assert init(Shortcut(16, 1, 'B', nn.Conv, BatchNorm), x) == {}


def test_projection_shortcuts():
  x = random((2, 8, 8, 16))
  norm = functools.partial(BatchNorm, use_running_average=True)
  conv = functools.partial(nn.Conv, use_bias=False)
  for option, features, strides in (('B', 32, 2), ('C', 16, 1)):
    shortcut = Shortcut(features, strides, option, conv, norm)
    variables = init(shortcut, x)
    assert variables['params']['conv']['kernel'].shape == (1, 1, 16, features)
    assert set(variables['params']['bn']) == {'scale', 'bias'}
    assert apply(shortcut, variables, x).shape == (2, 8 // strides, 8 // strides, features)
  with pytest.raises(ValueError, match=r"shortcut option 'D'; valid: \['A', 'B', 'C'\]"):
    Shortcut(16, 1, 'D', conv, norm).init(jax.random.key(0), x)


def block(cls, features, strides, **kw):
  conv = functools.partial(nn.Conv, use_bias=False, kernel_init=conv_kernel_init)
  norm = functools.partial(BatchNorm, use_running_average=True)
  return cls(features=features, strides=strides, conv=conv, norm=norm, act=nn.relu, **kw)


@pytest.mark.parametrize('cls,features', [(BasicBlock, 16), (BottleneckBlock, 4)])
def test_zero_init_residual_makes_the_block_the_identity(cls, features):
  x = jax.nn.relu(random((2, 6, 6, 16)))
  b = block(cls, features, 1, shortcut='A', zero_init_last=True)
  variables = init(b, x)
  last = 'bn2' if cls is BasicBlock else 'bn3'
  assert not variables['params'][last]['scale'].any()
  np.testing.assert_array_equal(apply(b, variables, x), x)
  normal = init(block(cls, features, 1, shortcut='A'), x)
  assert (normal['params'][last]['scale'] == 1).all()


def test_bottleneck_variants_and_plain_block():
  x = random((1, 8, 8, 16))
  for stride_in_1x1 in (True, False):
    b = block(BottleneckBlock, 8, 2, shortcut='B', stride_in_1x1=stride_in_1x1)
    variables = init(b, x)
    assert apply(b, variables, x).shape == (1, 4, 4, 32)
    conv1 = jax.eval_shape(lambda: b.apply(variables, x, capture_intermediates=True,
                                           mutable=['intermediates']))[1]
    out_hw = conv1['intermediates']['conv1']['__call__'][0].shape[1]
    assert out_hw == (4 if stride_in_1x1 else 8)
  plain = block(BasicBlock, 16, 1, shortcut=None)
  res = block(BasicBlock, 16, 1, shortcut='A')
  variables = init(plain, x)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
      jnp.shape, init(res, x))
  out, inter = apply(res, variables, x, capture_intermediates=True, mutable=['intermediates'])
  branch = inter['intermediates']['bn2']['__call__'][0]
  np.testing.assert_allclose(out, jax.nn.relu(branch + x), atol=1e-6)   # ReLU after the add
  np.testing.assert_allclose(apply(plain, variables, x), jax.nn.relu(branch), atol=1e-6)


@pytest.mark.parametrize('shape', [(2, 16, 16, 3), (1, 12, 20, 5)])
def test_space_to_depth_conv_equals_the_strided_conv(shape):
  x = jax.random.normal(jax.random.key(0), shape)
  kernel = jax.random.normal(jax.random.key(1), (7, 7, shape[-1], 8))

  def strided(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, (2, 2), [(3, 3), (3, 3)],
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  np.testing.assert_allclose(layers.space_to_depth_conv(x, kernel), strided(x, kernel),
                             rtol=1e-5, atol=1e-4)
  grads = [jax.grad(lambda k, f=f: jnp.sum(f(x, k) ** 2))(kernel)
           for f in (layers.space_to_depth_conv, strided)]
  np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-2)
  with pytest.raises(ValueError, match='even'):
    layers.space_to_depth_conv(x[:, 1:], kernel)


def test_stem_conv_keeps_the_conv_parameter_and_handles_odd_sizes():
  stem = layers.StemConv(8, 7)
  x = jax.random.normal(jax.random.key(0), (1, 15, 15, 3))
  variables = stem.init(jax.random.key(1), x)
  kernel = variables['params']['kernel']
  assert kernel.shape == (7, 7, 3, 8)
  expected = jax.lax.conv_general_dilated(x, kernel, (2, 2), [(3, 3), (3, 3)],
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(stem.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


def test_drop_path_drops_whole_examples_and_scales_the_kept():
  y = random((256, 2, 2, 3))
  out = layers.drop_path(y, 0.25, jax.random.key(1))
  kept = np.array([np.allclose(o, y_ / 0.75, rtol=1e-6) for o, y_ in zip(out, y)])
  dropped = np.array([not o.any() for o in out])
  assert (kept ^ dropped).all()              # each example either whole (scaled) or zero
  assert 0.15 < dropped.mean() < 0.35        # about a quarter dropped (256 examples)
  assert layers.drop_path(y.astype(jnp.bfloat16), 0.25, jax.random.key(1)).dtype == jnp.bfloat16


def test_stochastic_depth_drops_the_branch_in_training_only():
  x = jax.nn.relu(random((64, 6, 6, 16)))
  b = block(BasicBlock, 16, 1, shortcut='A', drop_rate=0.5, deterministic=False)
  variables = init(b, x)
  rngs = {'drop_path': jax.random.key(2)}
  out, inter = apply(b, variables, x, rngs=rngs, capture_intermediates=True,
                     mutable=['intermediates'])
  branch = inter['intermediates']['bn2']['__call__'][0]
  whole = jax.nn.relu(branch / 0.5 + x)
  per_example = [np.allclose(o, w, atol=1e-5) for o, w in zip(out, whole)]
  skipped = [np.allclose(o, x_, atol=1e-6) for o, x_ in zip(out, x)]   # ReLU(0 + x) = x
  assert all(a or s for a, s in zip(per_example, skipped))
  assert any(per_example) and any(skipped)
  evaluated = apply(b.clone(deterministic=True), variables, x)   # no rng needed
  np.testing.assert_allclose(evaluated, jax.nn.relu(branch + x), atol=1e-6)
