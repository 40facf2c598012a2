"""Synthetic data and a tiny model: the smoke test and the benchmark's default input.

    python -m resnet_jax.main --config=configs/fake.py --workdir=runs/fake

Trains `small_resnet` for 40 steps of batch 64 on random 32x32 images; on a 2-core CPU it
finishes in well under a minute and writes the usual workdir (checkpoints, metrics, plots).
The labels are random: the training loss falls as the model memorises the 1,024 examples, the
eval accuracy stays at chance.
"""

from resnet_jax.config_base import base_config


def get_config():
  c = base_config()
  c.data.source = 'fake'
  c.data.fake_image_shape = (32, 32, 3)
  c.data.fake_num_examples = 1024
  c.data.fake_num_classes = 10
  c.data.image_size = 32
  c.model.name = 'small_resnet'
  c.batch_size = 64
  c.eval_batch_size = 128
  c.num_steps = 40
  c.optimizer.lr = 0.1
  c.optimizer.lr_batch_size = 64
  c.schedule.name = 'constant'
  c.log_every_steps = 10
  return c
