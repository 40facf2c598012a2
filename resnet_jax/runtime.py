"""Process-wide JAX settings from the config, applied once at start-up, before any device use."""

import os

import jax
import ml_collections
from jax._src import xla_bridge

RNG_IMPLS = ('threefry2x32', 'rbg', 'unsafe_rbg')
DETERMINISTIC_FLAG = '--xla_gpu_deterministic_ops=true'


def set_rng_impl(name: str) -> None:
  if name not in RNG_IMPLS:
    raise ValueError(f'rng_impl={name!r}: expected one of {RNG_IMPLS}')
  jax.config.update('jax_default_prng_impl', name)


def configure(config: ml_collections.ConfigDict) -> None:
  """Sets the PRNG implementation (`rng_impl`) and XLA's deterministic GPU ops (`xla_deterministic`).

  XLA reads its flags when JAX first uses a device, so this must run before that; turning the
  deterministic ops on later is an error rather than a silent no-op.
  """
  set_rng_impl(config.rng_impl)
  flags = os.environ.get('XLA_FLAGS', '')
  if config.xla_deterministic and DETERMINISTIC_FLAG not in flags.split():
    if xla_bridge.backends_are_initialized():
      raise ValueError('xla_deterministic=True must be set before JAX starts its devices; '
                       f'here they are already running (or put {DETERMINISTIC_FLAG} in XLA_FLAGS)')
    os.environ['XLA_FLAGS'] = f'{flags} {DETERMINISTIC_FLAG}'.strip()
