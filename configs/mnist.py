"""MNIST from its idx files (the Fashion-MNIST demo's twin).

    python -m resnet_jax.main --config=configs/mnist.py --workdir=runs/mnist \
        --config.data.data_dir=/path/to/mnist-idx

The directory holds train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-*. A
CIFAR-style ResNet-20 with one input channel and the Fashion-MNIST recipe for 15 epochs
(`fast` and `best` keep their own), without horizontal flips (digits are not mirror-symmetric).
Variant argument: another CIFAR-family model (`:resnet56`, `:plain20`, ...). With the tfds catalog instead:
`--config.data.source=tfds --config.data.name=mnist --config.data.data_dir=DIR`, DIR prepared as the
README's "Datasets from the tfds catalog" says.
"""

from resnet_jax.recipes import idx_recipe


def get_config(arg: str | None = None):
  return idx_recipe(arg, dataset='mnist', data_dir='/usr/share/datasets/mnist',
                    mean=0.1307, std=0.3081, hflip=False, num_epochs=15)
