"""The model zoo by name: the ImageNet, CIFAR and small families, residual and plain."""

import dataclasses
from typing import Any

import jax.numpy as jnp

from resnet_jax.models.blocks import SHORTCUTS
from resnet_jax.models.layers import check_choice
from resnet_jax.models.resnet import VARIANTS, ResNet


@dataclasses.dataclass(frozen=True)
class Family:
  """What the models of one family share."""
  width: int                      # stem and first-stage channels
  stage_strides: tuple[int, ...]
  stem_kernel: int
  stem_strides: int
  stem_pool: bool
  shortcut: str                   # the default option
  num_classes: int
  input_shape: tuple[int, int, int]


IMAGENET = Family(width=64, stage_strides=(1, 2, 2, 2), stem_kernel=7, stem_strides=2,
                  stem_pool=True, shortcut='B', num_classes=1000, input_shape=(224, 224, 3))
CIFAR = Family(width=16, stage_strides=(1, 2, 2), stem_kernel=3, stem_strides=1, stem_pool=False,
               shortcut='A', num_classes=10, input_shape=(32, 32, 3))
SMALL = Family(width=32, stage_strides=(1, 2, 2), stem_kernel=3, stem_strides=1, stem_pool=False,
               shortcut='B', num_classes=10, input_shape=(32, 32, 3))


@dataclasses.dataclass(frozen=True)
class Spec:
  """One model name: its family, blocks per stage, block type, shortcuts or not."""
  family: Family
  stage_sizes: tuple[int, ...]
  bottleneck: bool
  residual: bool


def _specs() -> dict[str, Spec]:
  """resnetD and plainD (ImageNet), cifar_resnetD and cifar_plainD (D = 6n + 2), small_*."""
  imagenet = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
              101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True)}
  kinds = (('resnet', True), ('plain', False))
  specs = {f'{kind}{depth}': Spec(IMAGENET, sizes, bottleneck, residual)
           for kind, residual in kinds for depth, (sizes, bottleneck) in imagenet.items()}
  specs.update({f'cifar_{kind}{depth}': Spec(CIFAR, ((depth - 2) // 6,) * 3, False, residual)
                for kind, residual in kinds for depth in (20, 32, 44, 56, 110, 1202)})
  specs.update({f'small_{kind}': Spec(SMALL, (1, 1, 1), False, residual)
                for kind, residual in kinds})
  return specs


SPECS = _specs()


def model_names() -> list[str]:
  """All model names, e.g. 'resnet50', 'plain34', 'cifar_resnet56', 'small_resnet'."""
  return list(SPECS)


def _spec(name: str) -> Spec:
  check_choice('model name', name, tuple(SPECS))
  return SPECS[name]


def input_shape(name: str, in_channels: int | None = None) -> tuple[int, int, int]:
  """The model's standard input (H, W, C): 224x224x3 for ImageNet, 32x32x3 otherwise."""
  h, w, c = _spec(name).family.input_shape
  return h, w, in_channels or c


def resolved_options(name: str, shortcut: str | None, width: int | None) -> tuple[str, int]:
  """The shortcut option and width the model `name` is built with: the family's for None, ''
  or 0."""
  family = _spec(name).family
  return (shortcut or family.shortcut).upper(), width or family.width


def create_model(name: str, *, num_classes: int | None = None, in_channels: int | None = None,
                 shortcut: str | None = None, residual: bool = True, variant: str = 'v1.5',
                 zero_init_residual: bool = False, dtype: Any = 'float32',
                 param_dtype: Any = 'float32', bn_group_size: int | None = None,
                 bn_momentum: float = 0.9, bn_epsilon: float = 1e-5,
                 width: int | None = None, drop_path_rate: float = 0.0) -> ResNet:
  """The model `name` (see `model_names()`) with the given options.

  None, 0 or '' for `num_classes`, `shortcut`, `width` and `bn_group_size` mean the family's
  default (global-batch BN for `bn_group_size`). `residual=False` turns a ResNet into its plain
  twin; plain names are plain whatever `residual` says. `in_channels` only affects
  `input_shape`: Flax infers it from the input. `dtype`s may be strings ('bfloat16').
  `drop_path_rate` (stochastic depth) needs residual branches: a plain net refuses it.
  """
  spec = _spec(name)
  family = spec.family
  shortcut, width = resolved_options(name, shortcut, width)
  check_choice('shortcut option', shortcut, SHORTCUTS)
  check_choice('variant', variant, VARIANTS)
  for option, value in (('num_classes', num_classes), ('in_channels', in_channels),
                        ('width', width), ('bn_group_size', bn_group_size)):
    if value is not None and value < 0:
      raise ValueError(f'{option} must not be negative, got {value}')
  residual = spec.residual and residual
  if not 0 <= drop_path_rate < 1:
    raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
  if drop_path_rate and not residual:
    raise ValueError(f'drop_path_rate={drop_path_rate}: stochastic depth drops residual branches, '
                     f'and the plain net {name} (residual=False) has none')
  return ResNet(
      stage_sizes=spec.stage_sizes, num_classes=num_classes or family.num_classes,
      bottleneck=spec.bottleneck, width=width,
      stage_strides=family.stage_strides, stem_kernel=family.stem_kernel,
      stem_strides=family.stem_strides, stem_pool=family.stem_pool, shortcut=shortcut,
      residual=residual, variant=variant,
      zero_init_residual=zero_init_residual, dtype=jnp.dtype(dtype),
      param_dtype=jnp.dtype(param_dtype), bn_group_size=bn_group_size or None,
      bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, drop_path_rate=drop_path_rate)
