"""Plain vs residual 18- and 34-layer nets on ImageNet (paper Table 2 and Fig. 4).

    python -m resnet_jax.sweep --config=configs/ablations/plain_vs_residual_imagenet.py \
        --workdir=runs/table2

The paper's ImageNet recipe; the residual nets use option A (zero-padding, no extra parameters),
as in Table 2. Paper top-1 error (10-crop): plain-18 27.94%, plain-34 28.54%, ResNet-18 27.88%,
ResNet-34 25.03%.

The evals during training are centre crops; each finished point's final checkpoint is then
evaluated with the paper's 10-crop protocol (EVAL_PROTOCOLS), the report's `ten_crop` column.
"""

from resnet_jax.recipes import load_recipe

EVAL_PROTOCOLS = ('ten_crop',)   # the paper's ImageNet figures


def get_config(arg=None):
  if arg:
    raise ValueError(f'no variants: this sweep is the paper\'s recipe (got {arg!r})')
  return load_recipe('imagenet:resnet18')


def get_sweep(arg=None):
  del arg
  return [{'model.name': f'{kind}{d}', 'model.shortcut': 'A'}
          for kind in ('plain', 'resnet') for d in (18, 34)]
