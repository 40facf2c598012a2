"""Grid points of the CIFAR-family ablation sweeps (configs/ablations/), derived from the recipes.

A point is the recipe's own config for its model, written as overrides of the recipe's default
(ResNet-20): the model name and, where the recipe has one (CIFAR-10 ResNet-110 and 1202), its
warm-up. A depth sweep therefore trains every depth exactly as `configs/<dataset>.py:<model>` does.
"""

from typing import Any

from resnet_jax.recipes import load_recipe

CIFAR_DATASETS = ('cifar10', 'fashion_mnist')


def cifar_dataset(arg: str | None) -> str:
  """The sweep config's argument: 'cifar10' (the default) or 'fashion_mnist'."""
  dataset = arg or 'cifar10'
  if dataset not in CIFAR_DATASETS:
    raise ValueError(f'unknown sweep argument {arg!r}; valid: {", ".join(CIFAR_DATASETS)}')
  return dataset


def recipe_point(dataset: str, variant: str) -> dict[str, Any]:
  """The overrides that turn `load_recipe(dataset)` into `load_recipe(f'{dataset}:{variant}')`."""
  base, recipe = load_recipe(dataset), load_recipe(f'{dataset}:{variant}')
  point = {'model.name': recipe.model.name}
  for key in ('warmup', 'warmup_factor'):
    if recipe.schedule[key] != base.schedule[key]:
      point[f'schedule.{key}'] = recipe.schedule[key]
  return point
