"""The CIFAR-10 depth sweep of the paper's Table 6: ResNet-20, 32, 44, 56, 110 and 1202.

    python -m resnet_jax.sweep --config=configs/ablations/depth_cifar.py --workdir=runs/depth

The paper's recipe (configs/cifar10.py; ResNet-110 and 1202 warm up at lr 0.01 for 400
iterations). Paper test errors: 8.75, 7.51, 7.17, 6.97, 6.43 (best of 5 runs; mean 6.61+-0.16)
and 7.93%. `:fashion_mnist` runs the same depths on Fashion-MNIST.
"""

from resnet_jax.recipes import load_recipe

DEPTHS = (20, 32, 44, 56, 110, 1202)


def get_config(arg=None):
  return load_recipe(arg)


def get_sweep(arg=None):
  del arg
  return [{'model.name': f'cifar_resnet{d}', 'schedule.warmup': 400 if d >= 110 else 0,
           'schedule.warmup_factor': 0.1 if d >= 110 else 0.0} for d in DEPTHS]
