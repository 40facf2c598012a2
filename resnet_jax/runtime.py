"""Process-wide settings, applied once at start-up before any device use: XLA's flags."""

import os

import ml_collections
from jax._src import xla_bridge

DETERMINISTIC_FLAG = '--xla_gpu_deterministic_ops=true'
# Convolutions join XLA's default set of commands recorded into CUDA graphs. Without them the
# host launches each cuDNN convolution between graph pieces, and a small net's GPU waits for it:
# CIFAR ResNet-56 at batch 128 ran 1.8x faster on an H100 (docs/benchmarks.md, 2026-12-06).
# XLA_FLAGS that set --xla_gpu_enable_command_buffer themselves are left as they are.
COMMAND_BUFFER_FLAG = '--xla_gpu_enable_command_buffer=+CONVOLUTION'


def _flag_name(flag: str) -> str:
  return flag.split('=')[0]


def configure(config: ml_collections.ConfigDict) -> None:
  """Adds to XLA_FLAGS: convolutions in CUDA graphs, and deterministic GPU ops where the
  config asks for them (`xla_deterministic`).

  XLA reads its flags when JAX first uses a device, so this must run before that. Asking for
  deterministic ops later is an error rather than a silent no-op; the speed default is then
  left out.
  """
  flags = os.environ.get('XLA_FLAGS', '').split()
  added = []
  started = xla_bridge.backends_are_initialized()
  if config.xla_deterministic and DETERMINISTIC_FLAG not in flags:
    if started:
      raise ValueError('xla_deterministic=True must be set before JAX starts its devices; '
                       f'here they are already running (or put {DETERMINISTIC_FLAG} in XLA_FLAGS)')
    added.append(DETERMINISTIC_FLAG)
  if not started and _flag_name(COMMAND_BUFFER_FLAG) not in map(_flag_name, flags):
    added.append(COMMAND_BUFFER_FLAG)
  if added:
    os.environ['XLA_FLAGS'] = ' '.join(flags + added)
