"""Shortcut options A, B and C on CIFAR-style ResNet-20 and ResNet-56 (paper Sec. 3.3 and 4.2).

    python -m resnet_jax.sweep --config=configs/ablations/shortcuts_cifar.py --workdir=runs/shortcuts
    python -m resnet_jax.sweep --config=configs/ablations/shortcuts_cifar.py:fashion_mnist \
        --workdir=runs/shortcuts_fmnist

The paper's CIFAR-10 recipe (configs/cifar10.py), or with `:fashion_mnist` the Fashion-MNIST one.
A: zero-padding identity (no parameters); B: projections where the shape changes; C: projections
everywhere. On ImageNet the paper found B slightly better than A and C slightly better than B
(ResNet-34 top-1 error 25.03%, 24.52%, 24.19%), and concluded projections are not essential.
"""

from resnet_jax.ablation_grid import cifar_dataset, recipe_point
from resnet_jax.recipes import load_recipe


def get_config(arg=None):
  return load_recipe(cifar_dataset(arg))


def get_sweep(arg=None):
  dataset = cifar_dataset(arg)
  return [{**recipe_point(dataset, f'resnet{d}'), 'model.shortcut': s}
          for d in (20, 56) for s in ('A', 'B', 'C')]
