"""Fashion-MNIST: the default demo, which runs offline on a fresh machine.

    apt-get install dataset-fashion-mnist   # idx files under /usr/share/datasets/fashion-mnist
    python -m resnet_jax.main --config=configs/fashion_mnist.py --workdir=runs/fmnist

A CIFAR-style ResNet-20 (option A, one input channel) with the paper's CIFAR recipe scaled to
Fashion-MNIST's 60k/10k split: batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided
by 10 at 50% and 75% of training; 4-pixel pad, 28x28 random crop and horizontal flip, all on the
device. The variant argument picks another CIFAR-family model (`:resnet56`, `:plain20`, ...);
`--config.num_epochs` sets the length (default 30).

`:resnet20,fast` is the fast recipe (width 32, batch 512, bf16, 30 epochs; docs/results.md):
95.14% test top-1 in 22.49 s and 22.15 s of process wall time on one H100 from empty compilation
caches, 22.17 s from a warm one (2026-12-05); on H200s 95.17% in 27.61-32.10 s cold
(2026-12-04).

`:resnet20,best` is the most accurate recipe with at most 1.7M parameters (width 40, 1,675,810
parameters, 120 epochs, EMA with recomputed BN statistics; resnet_jax/recipes.py:best_recipe):
95.74% and 95.47% test top-1 at the final epoch in two runs on one H200, 95.63% and 95.58% for
the live weights (docs/results.md, 2026-12-04; the first run passed the same settings through
benchmarks/fashion_mnist_runs.sh and evaluated every epoch).
"""

from resnet_jax.recipes import FASHION_MNIST, idx_recipe


def get_config(arg: str | None = None):
  return idx_recipe(arg, **FASHION_MNIST)
