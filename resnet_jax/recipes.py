"""The paper's training recipes as functions, shared by the config files and the ablations.

Config files in `configs/` are thin: a docstring with the command and the expected result, and a
call to one of these.
"""

import ml_collections

from resnet_jax.config_base import base_config, parse_variant


CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)
CIFAR_VARIANTS = [f'{k}{d}' for k in ('resnet', 'plain') for d in CIFAR_DEPTHS]


def idx_recipe(arg: str | None, *, dataset: str, data_dir: str, mean: float, std: float,
               hflip: bool, num_epochs: int = 30) -> ml_collections.ConfigDict:
  """A CIFAR-family net on 28x28 idx data (MNIST, Fashion-MNIST) with the paper's CIFAR recipe
  for `num_epochs`; with the `fast` or `best` flag ('resnet20,fast'), the fast or the most
  accurate recipe of docs/results.md instead (its own number of epochs)."""
  name, flags = parse_variant(arg, CIFAR_VARIANTS, 'resnet20', flags=('fast', 'best'))
  if flags == {'fast', 'best'}:
    raise ValueError(f'config variant {arg!r}: choose one of the flags fast and best')
  c = base_config()
  c.model.name = f'cifar_{name}'
  c.model.shortcut = 'A'
  c.data.source = 'idx'
  c.data.name = dataset
  c.data.data_dir = data_dir
  c.data.image_size = 28
  c.data.augment = 'cifar'
  c.data.pad = 4
  c.data.hflip = hflip
  c.data.mean = (mean,)
  c.data.std = (std,)
  c.data.device_resident = True
  c.batch_size = 128
  c.eval_batch_size = 1024
  c.num_steps = 0
  c.num_epochs = num_epochs
  c.optimizer.lr = 0.1
  c.optimizer.lr_batch_size = 128
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = 'multistep'
  c.schedule.unit = 'fraction'
  c.schedule.boundaries = (0.5, 0.75)
  c.log_every_steps = 100
  if 'fast' in flags:
    fast_recipe(c)
  if 'best' in flags:
    best_recipe(c)
  return c


def fast_recipe(c: ml_collections.ConfigDict) -> None:
  """Few epochs of big batches, short to compile: width 32, batch 512, bf16, Nesterov SGD lr 0.4
  with 1 warmup epoch then linear decay, wd 5e-4, label smoothing 0.1, 30 epochs, eval and
  checkpoint at the end only, XLA's deterministic ops (no autotuning)."""
  c.model.width = 32
  c.batch_size = 512
  c.dtype = 'bfloat16'
  c.xla_deterministic = True
  c.num_epochs = 30
  c.optimizer.update(lr=0.4, lr_batch_size=512, nesterov=True, weight_decay=5e-4)
  c.schedule.update(name='linear', unit='epochs', warmup=1, boundaries=())
  c.label_smoothing = 0.1
  c.eval_every_steps = c.checkpoint_every_steps = 10**9   # i.e. at the last step only


def best_recipe(c: ml_collections.ConfigDict) -> None:
  """The most accurate recipe of docs/results.md with at most 1.7M parameters: width 40,
  batch 256, bf16, Nesterov SGD (lr 0.1 per 128 examples), 2 warmup epochs then cosine, wd 5e-4,
  label smoothing 0.1, random erasing 0.5, 120 epochs, an EMA of the weights (decay 0.9998)
  whose BN statistics are recomputed on the last 100 batches before each eval, every 10 epochs
  (an eval every epoch, with its 100 batches and its checkpoint, made an epoch take 2.1x as
  long: docs/results.md)."""
  c.model.width = 40
  c.batch_size = 256
  c.dtype = 'bfloat16'
  c.num_epochs = 120
  c.optimizer.update(nesterov=True, weight_decay=5e-4, ema_decay=0.9998, ema_bn_batches=100)
  c.schedule.update(name='cosine', unit='epochs', warmup=2, boundaries=())
  c.label_smoothing = 0.1
  c.data.random_erasing = 0.5
  c.keep_checkpoints = 1
  # Every 10 epochs of the 60,000 training images at whatever batch size the run is given
  # (each field its own reference, so that setting one leaves the other).
  c.eval_every_steps = 10 * (60_000 // c.get_ref('batch_size'))
  c.checkpoint_every_steps = 10 * (60_000 // c.get_ref('batch_size'))


def cifar10_recipe(arg: str | None = None) -> ml_collections.ConfigDict:
  """The paper's CIFAR-10 recipe (Sec. 4.2); `arg` is 'resnet56', 'plain20,holdout', ..."""
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
  c.eval_batch_size = 1024
  c.num_steps = 64_000
  c.num_epochs = 0
  c.optimizer.lr = 0.1
  c.optimizer.lr_batch_size = 128
  c.optimizer.momentum = 0.9
  c.optimizer.weight_decay = 1e-4
  c.schedule.name = 'multistep'
  c.schedule.unit = 'steps'
  c.schedule.boundaries = (32_000, 48_000)
  if model.endswith(('110', '1202')):
    c.schedule.warmup = 400   # the paper: lr 0.01 until training error < 80% (~400 iterations)
    c.schedule.warmup_factor = 0.1
  c.log_every_steps = 100
  c.eval_every_steps = 2000
  c.checkpoint_every_steps = 2000
  return c


IMAGENET_VARIANTS = [f'{k}{d}' for k in ('resnet', 'plain') for d in (18, 34, 50, 101, 152)]


def imagenet_recipe(arg: str | None = None) -> ml_collections.ConfigDict:
  """The paper's ImageNet recipe (Sec. 3.4) or the modern one; `arg` is 'resnet34', 'resnet50,modern', ..."""
  name, flags = parse_variant(arg, IMAGENET_VARIANTS, 'resnet50', flags=('modern',))
  modern = 'modern' in flags
  c = base_config()
  c.model.name = name
  c.model.shortcut = 'B'
  c.model.variant = 'v1.5' if modern else 'v1'
  c.model.zero_init_residual = modern
  c.data.source = 'tfds'
  c.data.name = 'imagenet2012'
  c.data.train_split = 'train'
  c.data.eval_split = 'validation'
  c.data.image_size = 224
  c.data.eval_resize = 256
  c.data.augment = 'inception_crop' if modern else 'imagenet_scale'
  c.data.scale_range = (256, 480)
  c.data.mean = (0.485, 0.456, 0.406)
  c.data.std = (0.229, 0.224, 0.225)
  c.data.pca_lighting = 0.0 if modern else 0.1
  c.data.num_workers = 16
  c.data.prefetch = 2
  c.batch_size = 256
  c.eval_batch_size = 256
  c.num_steps = 0
  c.num_epochs = 90 if modern else 120
  c.dtype = 'bfloat16' if modern else 'float32'
  c.optimizer.lr = 0.1
  c.optimizer.lr_batch_size = 256
  c.optimizer.momentum = 0.9
  c.optimizer.nesterov = modern
  c.optimizer.weight_decay = 5e-5 if modern else 1e-4
  c.optimizer.decay_bn_and_bias = not modern
  c.label_smoothing = 0.1 if modern else 0.0
  c.schedule.unit = 'epochs'
  if modern:
    c.schedule.name = 'cosine'
    c.schedule.warmup = 5
  else:
    c.schedule.name = 'multistep'
    c.schedule.boundaries = (30, 60, 90)
  c.log_every_steps = 100
  c.checkpoint_every_steps = 5000
  return c


FASHION_MNIST = dict(dataset='fashion_mnist', data_dir='/usr/share/datasets/fashion-mnist',
                     mean=0.2860, std=0.3530, hflip=True)


def load_recipe(spec: str | None) -> ml_collections.ConfigDict:
  """'cifar10[:variant]' (the default), 'fashion_mnist[:variant]' or 'imagenet[:variant]'."""
  name, _, arg = (spec or 'cifar10').partition(':')
  if name == 'cifar10':
    return cifar10_recipe(arg or None)
  if name == 'fashion_mnist':
    return idx_recipe(arg or None, **FASHION_MNIST)
  if name == 'imagenet':
    return imagenet_recipe(arg or None)
  raise ValueError(f"unknown recipe {name!r}; valid: 'cifar10', 'fashion_mnist', 'imagenet'")
