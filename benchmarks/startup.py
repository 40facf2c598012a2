"""Where a short run's start-up goes: import times, and the state initialisation compiled and
run on the accelerator against the host CPU (then copied over). One GPU call:

    python3 benchmarks/startup.py [--config=configs/fashion_mnist.py:resnet20,fast]

Each import is timed in a fresh interpreter; the initialisations run in this process, each
compiled from scratch (no compilation cache).
"""

import argparse
import subprocess
import sys
import time

MODULES = ('numpy', 'jax', 'flax.linen', 'optax', 'orbax.checkpoint', 'tensorboardX', 'torch',
           'matplotlib.figure', 'grain', 'tensorflow_datasets', 'resnet_jax.train.loop')


def import_seconds(module: str) -> float | None:
  code = (f'import time; t = time.perf_counter(); import {module}; '
          'print(time.perf_counter() - t)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
  return float(out.stdout) if out.returncode == 0 else None


def init_seconds(config_arg: str) -> dict[str, float]:
  import functools
  import jax
  from ml_collections import config_flags  # noqa: F401  (config files import it)
  from resnet_jax import parallel
  from resnet_jax.train.loop import Trainer
  from resnet_jax.train.state import create_train_state
  import importlib.util
  path, _, variant = config_arg.partition(':')
  spec = importlib.util.spec_from_file_location('cfg', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant or None)
  mesh = parallel.create_mesh()
  t = time.perf_counter()
  jax.block_until_ready(jax.device_put(1.0))
  times = {'backend start': time.perf_counter() - t}
  trainer = Trainer(config, mesh, num_classes=10, image_shape=(28, 28, 1), steps_per_epoch=100)
  key = jax.random.PRNGKey(0)
  t = time.perf_counter()
  compiled = trainer._init.lower(key).compile()
  times['accelerator: compile'] = time.perf_counter() - t
  t = time.perf_counter()
  jax.block_until_ready(compiled(key))
  times['accelerator: first run'] = time.perf_counter() - t
  cpu = jax.devices('cpu')[0]
  init = functools.partial(create_train_state, trainer.model, trainer.tx,
                           image_shape=(28, 28, 1), ema=False)
  t = time.perf_counter()
  with jax.default_device(cpu):
    host_key = jax.random.PRNGKey(0)
    host_compiled = jax.jit(init).lower(host_key).compile()
  times['host: compile'] = time.perf_counter() - t
  t = time.perf_counter()
  state = jax.block_until_ready(host_compiled(host_key))
  times['host: run'] = time.perf_counter() - t
  t = time.perf_counter()
  jax.block_until_ready(jax.device_put(state, trainer.state_sharding))
  times['host: copy to the accelerator'] = time.perf_counter() - t
  return times


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__)
  p.add_argument('--config', default='configs/fashion_mnist.py:resnet20,fast')
  args = p.parse_args()
  for module in MODULES:
    s = import_seconds(module)
    print(f'import {module}: ' + ('not installed' if s is None else f'{s:.2f} s'), flush=True)
  for what, s in init_seconds(args.config).items():
    print(f'{what}: {s:.2f} s', flush=True)


if __name__ == '__main__':
  main()
