"""The CIFAR-10 depth sweep of the paper's Table 6: ResNet-20, 32, 44, 56, 110 and 1202.

    python -m resnet_jax.sweep --config=configs/ablations/depth_cifar.py --workdir=runs/depth
    python -m resnet_jax.sweep --config=configs/ablations/depth_cifar.py --workdir=runs/depth5 \
        --seeds=5      # each depth 5 times, as the paper ran ResNet-110: mean +- std in the report
    python -m resnet_jax.sweep --config=configs/ablations/depth_cifar.py:fashion_mnist \
        --workdir=runs/depth_fmnist

Each point is the paper's recipe for its model (configs/cifar10.py:<model>; ResNet-110 and 1202
warm up at lr 0.01 for 400 iterations). Paper test errors: 8.75, 7.51, 7.17, 6.97, 6.43 (best of
5 runs; mean 6.61+-0.16) and 7.93%. `:fashion_mnist` runs the same depths with the
Fashion-MNIST recipe (configs/fashion_mnist.py:<model>, no warm-up).
"""

from resnet_jax.ablation_grid import cifar_dataset, recipe_point
from resnet_jax.recipes import load_recipe

DEPTHS = (20, 32, 44, 56, 110, 1202)


def get_config(arg=None):
  return load_recipe(cifar_dataset(arg))


def get_sweep(arg=None):
  dataset = cifar_dataset(arg)
  return [recipe_point(dataset, f'resnet{d}') for d in DEPTHS]
