"""The run of tests/test_multiprocess.py: small_resnet on generated 28x28 idx data, grain pipeline.

The test passes `--config.data.data_dir` and `--config.num_steps`; the reference run in the test
process builds the same config with `get_config()`.
"""

from tests.helpers import fake_config


def get_config():
  c = fake_config(batch_size=16, eval_batch_size=16, num_steps=3, log_every_steps=1)
  c.data.update(source='idx', name='fashion_mnist', image_size=28, augment='cifar', pad=2,
                device_resident=False, mean=(0.3,), std=(0.3,), prefetch=1)
  return c
