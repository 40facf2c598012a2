"""The degradation problem (paper Fig. 6): plain vs residual nets of depth 20, 32, 44, 56, 110.

    python -m resnet_jax.sweep --config=configs/ablations/degradation.py --workdir=runs/degradation
    python -m resnet_jax.sweep --config=configs/ablations/degradation.py:fashion_mnist \
        --workdir=runs/degradation_fmnist

Each point is the paper's CIFAR-10 recipe for its model (configs/cifar10.py:<model>, so the
110-layer nets warm up at lr 0.01 for 400 iterations), or with `:fashion_mnist` the same recipe
on Fashion-MNIST (configs/fashion_mnist.py:<model>, no warm-up). Each point trains in its own
sub-workdir; the report overlays training error (thin) and test error (bold) against iterations,
as in Fig. 6. The paper finds plain nets worse the deeper they are (plain-56 above plain-20 in
training error) and ResNets better the deeper they are (ResNet-110 6.43% test error, ResNet-20
8.75%).
"""

from resnet_jax.ablation_grid import cifar_dataset, recipe_point
from resnet_jax.recipes import load_recipe

DEPTHS = (20, 32, 44, 56, 110)


def get_config(arg=None):
  return load_recipe(cifar_dataset(arg))


def get_sweep(arg=None):
  dataset = cifar_dataset(arg)
  return [recipe_point(dataset, f'{kind}{d}') for kind in ('plain', 'resnet') for d in DEPTHS]
