"""Process-wide settings: XLA's flags (deterministic GPU ops, convolutions in CUDA graphs)."""

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


def test_flags_reach_xla_before_the_devices_start():
  code = ('import os, jax; from resnet_jax import runtime; from tests.helpers import fake_config; '
          'runtime.configure(fake_config(xla_deterministic=True)); '
          'print(os.environ["XLA_FLAGS"]); print(jax.jit(lambda x: x + 1)(1))')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       env=env, cwd=os.path.dirname(os.path.dirname(__file__))).stdout.split('\n')
  assert out[0].split() == ['--xla_force_host_platform_device_count=2',
                            runtime.DETERMINISTIC_FLAG, runtime.COMMAND_BUFFER_FLAG]
  assert out[1] == '2'


@pytest.fixture
def not_started(monkeypatch):
  monkeypatch.setattr(runtime.xla_bridge, 'backends_are_initialized', lambda: False)


@pytest.mark.parametrize('own', ['--xla_gpu_enable_command_buffer=',
                                 '--xla_gpu_enable_command_buffer=FUSION,CUBLAS'])
def test_command_buffers_set_in_xla_flags_are_kept(monkeypatch, not_started, own):
  monkeypatch.setenv('XLA_FLAGS', f'--xla_dump_to=/tmp/x {own}')
  runtime.configure(fake_config())
  assert os.environ['XLA_FLAGS'] == f'--xla_dump_to=/tmp/x {own}'


def test_without_xla_flags_convolutions_join_the_cuda_graphs(monkeypatch, not_started):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  runtime.configure(fake_config())
  assert os.environ['XLA_FLAGS'] == runtime.COMMAND_BUFFER_FLAG


def test_after_the_devices_started_the_speed_default_is_left_out(monkeypatch, devices):
  monkeypatch.setenv('XLA_FLAGS', '--xla_dump_to=/tmp/x')
  runtime.configure(fake_config())
  assert os.environ['XLA_FLAGS'] == '--xla_dump_to=/tmp/x'
