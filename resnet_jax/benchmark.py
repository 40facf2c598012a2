"""Training throughput: `python -m resnet_jax.benchmark --config=configs/imagenet.py`.

Times the real train step of a config (the same `Trainer` the loop uses) on synthetic data
already on the devices, or with `--pipeline` on the config's own input pipeline. Prints the
median images/s over timed windows after warm-up, the step time, the compile time of the first
step, peak device memory, the devices and the versions, then one JSON line.
"""

import json
import statistics
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax import parallel, profiling, runtime
from resnet_jax.config_base import parse_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (path[:variant]).',
                                          lock_config=True)
_PIPELINE = flags.DEFINE_bool('pipeline', False, 'Feed the step from the real input pipeline.')
_DEVICES = flags.DEFINE_integer('devices', 0, 'Use the first N devices (0 = all).')
_WARMUP = flags.DEFINE_integer('warmup', 10, 'Untimed steps after the first (compiling) one.')
_WINDOWS = flags.DEFINE_integer('windows', 5, 'Timed windows; the median is reported.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Steps per timed window.')
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 1000, 'Classes of the synthetic data.')
_PROFILE_DIR = flags.DEFINE_string(
    'profile_dir', '', 'After timing, trace one window of steps into this directory and print '
    'where the device time goes (GPU kernels by category).')
flags.mark_flags_as_required(['config'])


def synthetic_batch(config, mesh, channels: int, num_classes: int) -> dict[str, jax.Array]:
  """A random uint8 batch of the config's crop size, placed on the devices once."""
  rng = np.random.default_rng(0)
  size = config.data.image_size
  batch = {'image': rng.integers(0, 256, (config.batch_size, size, size, channels), np.uint8),
           'label': rng.integers(0, num_classes, (config.batch_size,), np.int32)}
  return jax.device_put(batch, parallel.batch_sharding(mesh))


def synthetic_channels(d) -> int:
  """The channels of the config's images: its dataset's where it can be read (1 for MNIST-like
  idx data), else those of `data.fake_image_shape` (ImageNet not prepared here: 3)."""
  if d.source == 'fake':
    return d.fake_image_shape[-1]
  from resnet_jax.data.sources import load_split
  try:
    return load_split(d, train=False).channels
  except (OSError, ValueError) as e:
    logging.warning('synthetic images get data.fake_image_shape\'s %d channels: %s',
                    d.fake_image_shape[-1], e)
    return d.fake_image_shape[-1]


def peak_memory_bytes() -> int | None:
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def versions() -> dict[str, str]:
  import flax
  import jaxlib
  import optax
  return {'python': sys.version.split()[0], 'jax': jax.__version__,
          'jaxlib': jaxlib.__version__, 'flax': flax.__version__, 'optax': optax.__version__}


def run_benchmark(config, *, pipeline: bool, num_devices: int, warmup: int, windows: int,
                  steps: int, num_classes: int, profile_dir: str = '') -> dict:
  """Compiles, warms up and times the train step; returns the figures."""
  from resnet_jax import data
  from resnet_jax.train.restore import load_teacher
  from resnet_jax.train.trainer import Trainer

  runtime.configure(config)
  mesh = parallel.create_mesh(num_devices)
  if pipeline:
    train_input = data.create_input(config, mesh, train=True)
    num_classes, channels = train_input.info.num_classes, train_input.info.image_shape[-1]
    batches = iter(train_input)
  else:
    channels = synthetic_channels(config.data)
    fixed = synthetic_batch(config, mesh, channels, num_classes)
    batches = iter(lambda: fixed, None)
  size = config.data.image_size
  trainer = Trainer(config, mesh, num_classes=num_classes, image_shape=(size, size, channels),
                    steps_per_epoch=1000,
                    teacher=load_teacher(config, num_classes=num_classes, channels=channels))
  state = trainer.init_state()
  jax.block_until_ready(state)

  t = time.perf_counter()
  state, metrics = trainer.train_step(state, next(batches))
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t
  for _ in range(warmup):
    state, metrics = trainer.train_step(state, next(batches))
  jax.block_until_ready(metrics)

  step_times = []
  for _ in range(windows):
    t = time.perf_counter()
    for _ in range(steps):
      state, metrics = trainer.train_step(state, next(batches))
    jax.block_until_ready(metrics)
    step_times.append((time.perf_counter() - t) / steps)
  step_s = statistics.median(step_times)
  peak = peak_memory_bytes()
  if profile_dir:
    with jax.profiler.trace(profile_dir):
      for _ in range(steps):
        state, metrics = trainer.train_step(state, next(batches))
      jax.block_until_ready(metrics)
    print(profiling.kernel_breakdown(profile_dir, steps, 1000 * step_s), flush=True)
  return {
      'model': config.model.name,
      'dtype': config.dtype,
      'global_batch': config.batch_size,
      'image_shape': [size, size, channels],
      'devices': mesh.devices.size,
      'device_kind': jax.devices()[0].device_kind,
      'pipeline': pipeline,
      'images_per_sec': config.batch_size / step_s,
      'images_per_sec_per_device': config.batch_size / step_s / mesh.devices.size,
      'step_ms': 1000 * step_s,
      'step_ms_windows': [round(1000 * s, 3) for s in step_times],
      'compile_s': compile_s,
      'peak_memory_gib': None if peak is None else peak / 2**30,
      'final_loss': float(metrics['loss']),
      **versions(),
  }


def main(argv):
  del argv
  r = run_benchmark(_CONFIG.value, pipeline=_PIPELINE.value, num_devices=_DEVICES.value,
                    warmup=_WARMUP.value, windows=_WINDOWS.value, steps=_STEPS.value,
                    num_classes=_NUM_CLASSES.value, profile_dir=_PROFILE_DIR.value)
  mem = 'n/a' if r['peak_memory_gib'] is None else f"{r['peak_memory_gib']:.2f} GiB"
  print(f"{r['model']} {r['dtype']} batch {r['global_batch']} on {r['devices']} x "
        f"{r['device_kind']} ({'input pipeline' if r['pipeline'] else 'synthetic data'})\n"
        f"  {r['images_per_sec']:,.0f} images/s ({r['images_per_sec_per_device']:,.0f} per device), "
        f"step {r['step_ms']:.2f} ms, first step (compile) {r['compile_s']:.1f} s, "
        f"peak memory {mem}\n"
        f"  python {r['python']}, jax {r['jax']}, jaxlib {r['jaxlib']}, flax {r['flax']}, "
        f"optax {r['optax']}")
  print(json.dumps(r))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
