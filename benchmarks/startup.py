"""Where a short run's start-up goes: import times, and the state initialisation compiled and
run on the accelerator against the host CPU. One GPU call:

    python3 benchmarks/startup.py --config=configs/fashion_mnist.py:resnet20,fast

Each import is timed in a fresh interpreter; each initialisation is compiled from scratch (no
compilation cache), with the config's XLA settings.
"""

import functools
import subprocess
import sys
import time

import jax
from absl import app
from ml_collections import config_flags

from resnet_jax import parallel, runtime
from resnet_jax.train.trainer import Trainer
from resnet_jax.train.state import create_train_state

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/fashion_mnist.py:resnet20,fast',
                                          'Config file (path[:variant]).')
MODULES = ('numpy', 'jax', 'flax.linen', 'optax', 'orbax.checkpoint', 'tensorboardX', 'torch',
           'matplotlib.figure', 'grain', 'tensorflow_datasets', 'resnet_jax.train.loop')


def import_seconds(module: str) -> float | None:
  code = f'import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)'
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
  return float(out.stdout) if out.returncode == 0 else None


def init_seconds(config, image_shape=(28, 28, 1)) -> dict[str, float]:
  runtime.configure(config)
  t = time.perf_counter()
  mesh = parallel.create_mesh()
  jax.block_until_ready(jax.device_put(1.0))
  times = {'backend start': time.perf_counter() - t}
  trainer = Trainer(config, mesh, num_classes=10, image_shape=image_shape, steps_per_epoch=100)
  init = jax.jit(functools.partial(create_train_state, trainer.model, trainer.tx,
                                   image_shape=image_shape, ema=False))
  for where, device in (('accelerator', jax.local_devices()[0]),
                        ('host', jax.local_devices(backend='cpu')[0])):
    with jax.default_device(device):
      key = jax.random.PRNGKey(0)
      t = time.perf_counter()
      compiled = init.lower(key).compile()
      times[f'init on the {where}: compile'] = time.perf_counter() - t
      t = time.perf_counter()
      jax.block_until_ready(compiled(key))
      times[f'init on the {where}: run'] = time.perf_counter() - t
  return times


def main(argv) -> None:
  del argv
  for module in MODULES:
    s = import_seconds(module)
    print(f'import {module}: ' + ('not installed' if s is None else f'{s:.2f} s'), flush=True)
  for what, s in init_seconds(_CONFIG.value).items():
    print(f'{what}: {s:.2f} s', flush=True)


if __name__ == '__main__':
  app.run(main)
