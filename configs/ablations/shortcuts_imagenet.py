"""Shortcut options A, B and C on ImageNet ResNet-34 (paper Table 3).

    python -m resnet_jax.sweep --config=configs/ablations/shortcuts_imagenet.py --workdir=runs/rn34_abc

The paper's ImageNet recipe (configs/imagenet.py). Paper 10-crop top-1 error: A 25.03%,
B 24.52%, C 24.19%.

The evals during training are centre crops; each finished point's final checkpoint is then
evaluated with the paper's 10-crop protocol (EVAL_PROTOCOLS), the report's `ten_crop` column.
"""

from resnet_jax.recipes import load_recipe

EVAL_PROTOCOLS = ('ten_crop',)   # the paper's ImageNet figures


def get_config(arg=None):
  if arg:
    raise ValueError(f'no variants: this sweep is the paper\'s recipe (got {arg!r})')
  return load_recipe('imagenet:resnet34')


def get_sweep(arg=None):
  del arg
  return [{'model.shortcut': s} for s in ('A', 'B', 'C')]
