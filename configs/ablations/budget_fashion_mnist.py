"""Depth against width at a fixed budget of 1.7M parameters, on Fashion-MNIST.

    python -m resnet_jax.sweep --config=configs/ablations/budget_fashion_mnist.py \
        --workdir=runs/budget
    python -m resnet_jax.sweep --config=configs/ablations/budget_fashion_mnist.py \
        --workdir=runs/budget_cutmix --set data.cutmix=1.0 --set data.mix_prob=0.5

The most accurate Fashion-MNIST recipe (configs/fashion_mnist.py:resnet20,best: 120 epochs, EMA
with recomputed BN statistics, random erasing) on CIFAR-style ResNets of 20, 32, 44, 56 and 110
layers (option A), each at the largest width that keeps it within 1.7M parameters (the
reproduction issue's budget; computed from the models: widths 40, 30, 25, 22 and 15). The
paper's CIFAR nets keep width 16 and buy accuracy with depth (ResNet-110 has 1.73M parameters);
this asks which way a fixed budget is better spent.
"""

from resnet_jax.models.summary import widest_within
from resnet_jax.recipes import load_recipe

BUDGET = 1_700_000
DEPTHS = (20, 32, 44, 56, 110)


def get_config(arg=None):
  if arg:
    raise ValueError(f'budget_fashion_mnist.py takes no argument, got {arg!r}')
  return load_recipe('fashion_mnist:resnet20,best')


def get_sweep(arg=None):
  config = get_config(arg)
  options = dict(num_classes=10, in_channels=len(config.data.mean), shortcut=config.model.shortcut)
  return [{'model.name': f'cifar_resnet{d}',
           'model.width': widest_within(f'cifar_resnet{d}', BUDGET, **options)} for d in DEPTHS]
