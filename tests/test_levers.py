"""benchmarks/levers.py's experimental patches compute what the package computes.

A lever's speed means something only if the patched step trains the same model: same
variables, loss, gradients and running statistics.
"""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models
from resnet_jax.models import resnet

LEVERS = Path(__file__).resolve().parents[1] / 'benchmarks' / 'levers.py'


@pytest.fixture(scope='module')
def levers():
  spec = importlib.util.spec_from_file_location('levers', LEVERS)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def loss_grads_stats_eval(model, x, labels):
  """(variables, loss, gradients, new batch_stats, eval logits) as one program."""
  @jax.jit
  def run(x):
    variables = model.init(jax.random.key(0, impl='rbg'), x, train=False)

    def loss(params):
      logits, updates = model.apply({**variables, 'params': params}, x, train=True,
                                    mutable=['batch_stats'])
      log_p = jax.nn.log_softmax(logits)
      return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None], 1)), updates['batch_stats']

    (value, stats), grads = jax.value_and_grad(loss, has_aux=True)(variables['params'])
    return variables, value, grads, stats, model.apply(variables, x, train=False)
  return run(x)


@pytest.mark.parametrize('model', [
    models.create_model('cifar_resnet20', width=4, num_classes=5),              # option A
    models.create_model('resnet18', width=4, num_classes=5, shortcut='C'),      # projections
    resnet.ResNet(stage_sizes=(1, 1), num_classes=5, bottleneck=True, width=4,  # option B
                  stage_strides=(1, 2), zero_init_residual=True),
], ids=['cifar_resnet20', 'resnet18_C', 'bottleneck_B_zero_init'])
def test_fused_bn_trains_the_same_model(levers, monkeypatch, model):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 32, 32, 3)), jnp.float32)
  labels = jnp.arange(8) % 5
  ours = loss_grads_stats_eval(model, x, labels)
  for attr, cls in zip(('BatchNorm', 'BasicBlock', 'BottleneckBlock'),
                       levers.fused_model_classes()):
    monkeypatch.setattr(resnet, attr, cls)
  fused = loss_grads_stats_eval(model, x, labels)
  assert jax.tree.structure(fused[0]) == jax.tree.structure(ours[0])
  jax.tree.map(np.testing.assert_array_equal, fused[0], ours[0])
  np.testing.assert_allclose(fused[1], ours[1], rtol=1e-5)
  for got, want in zip(jax.tree.leaves(fused[2:]), jax.tree.leaves(ours[2:])):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(jnp.abs(want).max()))
