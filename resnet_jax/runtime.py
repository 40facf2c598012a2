"""Process-wide settings from the config, applied once at start-up, before any device use."""

import os

import ml_collections
from jax._src import xla_bridge

DETERMINISTIC_FLAG = '--xla_gpu_deterministic_ops=true'


def configure(config: ml_collections.ConfigDict) -> None:
  """Turns on XLA's deterministic GPU ops for `xla_deterministic` (through XLA_FLAGS).

  XLA reads its flags when JAX first uses a device, so this must run before that; asking for
  them later is an error rather than a silent no-op.
  """
  flags = os.environ.get('XLA_FLAGS', '')
  if config.xla_deterministic and DETERMINISTIC_FLAG not in flags.split():
    if xla_bridge.backends_are_initialized():
      raise ValueError('xla_deterministic=True must be set before JAX starts its devices; '
                       f'here they are already running (or put {DETERMINISTIC_FLAG} in XLA_FLAGS)')
    os.environ['XLA_FLAGS'] = f'{flags} {DETERMINISTIC_FLAG}'.strip()
