"""Process-wide settings from the config: XLA's deterministic GPU ops."""

import os
import subprocess
import sys

import pytest

from resnet_jax import runtime
from tests.helpers import fake_config


def test_xla_deterministic_after_the_devices_started_is_an_error(devices):
  flags = os.environ.get('XLA_FLAGS', '')
  with pytest.raises(ValueError, match='before JAX starts'):
    runtime.configure(fake_config(xla_deterministic=True))
  assert os.environ.get('XLA_FLAGS', '') == flags


def test_xla_deterministic_reaches_xla_before_the_devices_start():
  code = ('import os, jax; from resnet_jax import runtime; from tests.helpers import fake_config; '
          'runtime.configure(fake_config(xla_deterministic=True)); '
          'print(os.environ["XLA_FLAGS"]); print(jax.jit(lambda x: x + 1)(1))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(__file__))).stdout.split('\n')
  assert runtime.DETERMINISTIC_FLAG in out[0].split()
  assert out[1] == '2'
