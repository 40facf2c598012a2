"""CIFAR-10 with the paper's recipe (He et al. 2015, Sec. 4.2).

    python -m resnet_jax.main --config=configs/cifar10.py:resnet56 --workdir=runs/c10_r56
    python -m resnet_jax.main --config=configs/cifar10.py:plain20,holdout --workdir=runs/c10_p20

Variant argument: a model (`resnet20|32|44|56|110|1202`, or `plain20..1202` for the plain
baselines; default resnet20) and optionally `holdout` (train on 45k, evaluate on the held-out 5k,
as the paper's Fig. 6 and Table 6 analysis does). Recipe: batch 128, SGD momentum 0.9, weight decay
1e-4 (L2), lr 0.1 divided by 10 at 32k and 48k iterations, stop at 64k; 4-pixel pad, 32x32 random
crop, horizontal flip; per-pixel mean subtraction (here per-channel mean/std). Option A
shortcuts. ResNet-110 (and 1202) warm up at lr 0.01 for the first 400 iterations, as the paper does.
The paper reports test error 8.75% (ResNet-20), 7.51% (32), 7.17% (44), 6.97% (56), 6.43% (110),
7.93% (1202). Needs `tfds build cifar10` first (extra `prepare`; see the README).
"""

from resnet_jax.config_base import CIFAR_VARIANTS, base_config, parse_variant


def get_config(arg: str | None = None):
  name, flags = parse_variant(arg, CIFAR_VARIANTS, 'resnet20', flags=('holdout',))
  model, holdout = f'cifar_{name}', 'holdout' in flags
  c = base_config()
  c.model.name = model
  c.model.shortcut = 'A'
  c.data.source = 'tfds'
  c.data.name = 'cifar10'
  c.data.holdout = 5000 if holdout else 0
  c.data.image_size = 32
  c.data.augment = 'cifar'
  c.data.pad = 4
  c.data.mean = (0.4914, 0.4822, 0.4465)
  c.data.std = (0.2470, 0.2435, 0.2616)
  c.data.device_resident = True
  c.batch_size = 128
  c.eval_batch_size = 1000
  c.num_steps = 64_000
  c.optimizer.lr = 0.1
  c.optimizer.lr_batch_size = 128
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = 'multistep'
  c.schedule.unit = 'steps'
  c.schedule.boundaries = (32_000, 48_000)
  if model.endswith(('110', '1202')):
    c.schedule.warmup = 400   # the paper: 0.01 until training error < 80% (~400 iterations)
  c.log_every_steps = 100
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 2000
  return c
