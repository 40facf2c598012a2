"""Process-wide settings from the config: the PRNG implementation and XLA's deterministic ops."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from resnet_jax import parallel, runtime
from resnet_jax.checkpoint import Checkpointer, CheckpointMismatchError
from resnet_jax.train.loop import Trainer, train_and_evaluate
from tests.helpers import fake_config


@pytest.fixture
def restore_prng_impl():
  before = jax.config.jax_default_prng_impl
  yield
  jax.config.update('jax_default_prng_impl', before)


def test_an_unknown_rng_impl_is_an_error_naming_it():
  with pytest.raises(ValueError, match="rng_impl='philox'"):
    runtime.configure(fake_config(rng_impl='philox'))


def test_an_rbg_run_trains_and_its_checkpoint_refuses_another_rng_impl(
    tmp_path, devices, restore_prng_impl):
  config = fake_config(num_steps=2, rng_impl='rbg')
  summary = train_and_evaluate(config, tmp_path)
  assert np.isfinite(summary['final']['eval/loss'])
  trainer = Trainer(config, parallel.create_mesh(), num_classes=10, image_shape=(16, 16, 3),
                    steps_per_epoch=1)
  ckpt = Checkpointer(tmp_path)
  state, _ = ckpt.restore(trainer.abstract_state, config)
  ckpt.close()
  assert state.rng.shape == (4,)   # an rbg key; threefry's are uint32[2]
  with pytest.raises(CheckpointMismatchError, match="rng_impl: checkpoint 'rbg'"):
    train_and_evaluate(fake_config(num_steps=4), tmp_path)


def test_xla_deterministic_after_the_devices_started_is_an_error(devices):
  flags = os.environ.get('XLA_FLAGS', '')
  with pytest.raises(ValueError, match='before JAX starts'):
    runtime.configure(fake_config(xla_deterministic=True))
  assert os.environ.get('XLA_FLAGS', '') == flags


def test_xla_deterministic_reaches_xla_before_the_devices_start():
  code = ('import os, jax; from resnet_jax import parallel, runtime; from tests.helpers import fake_config; '
          'runtime.configure(fake_config(xla_deterministic=True)); '
          'print(os.environ["XLA_FLAGS"]); print(jax.jit(lambda x: x + 1)(1))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(__file__))).stdout.split('\n')
  assert runtime.DETERMINISTIC_FLAG in out[0].split()
  assert out[1] == '2'
