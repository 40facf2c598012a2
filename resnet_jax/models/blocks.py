"""Residual blocks (He et al. 2015, Fig. 2 and Fig. 5) and their shortcuts (Sec. 3.3 and 4.1).

Blocks get `conv` (a `flax.linen.Conv` without bias), `norm` (a `BatchNorm`) and `act` injected,
so that dtypes and BN options are configuration. BN follows every conv; the activation follows
the addition. `shortcut=None` gives the plain block: the same convs, no shortcut. `drop_rate`
drops the residual branch of each example with that probability in training (stochastic depth,
`layers.drop_path`; the rng stream 'drop_path').
"""

from typing import Any, Callable

import flax.linen as nn
import jax

from resnet_jax.models.layers import check_choice, drop_path, zero_pad_shortcut

ModuleDef = Any
SHORTCUTS = ('A', 'B', 'C')


class Shortcut(nn.Module):
  """The shortcut of a block: identity, option A (zero-padding), B or C (projection).

  A: identity, or subsample + zero-pad where the shape changes (no parameters).
  B: a projection (1x1 conv with stride + BN) where the shape changes, identity elsewhere.
  C: a projection on every block.
  """
  features: int
  strides: int
  option: str
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    check_choice('shortcut option', self.option, SHORTCUTS)
    changes = self.strides != 1 or x.shape[-1] != self.features
    if self.option == 'C' or (self.option == 'B' and changes):
      x = self.conv(self.features, (1, 1), self.strides, padding=0, name='conv')(x)
      return self.norm(name='bn')(x)
    return zero_pad_shortcut(x, self.features, self.strides) if changes else x


class _Block(nn.Module):
  """Fields and the shortcut-add-activate tail shared by the two blocks."""
  features: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array]
  shortcut: str | None = 'B'
  zero_init_last: bool = False
  drop_rate: float = 0.0
  deterministic: bool = True   # False: training, where `drop_rate` drops branches

  def last_norm(self, name: str) -> nn.Module:
    """The BN of the last conv; its scale starts at 0 with `zero_init_last` (Goyal et al. 2017)."""
    if self.zero_init_last:
      return self.norm(scale_init=nn.initializers.zeros, name=name)
    return self.norm(name=name)

  def merge(self, x: jax.Array, y: jax.Array, out_features: int) -> jax.Array:
    """act(y + shortcut(x)), the branch y through stochastic depth; act(y) for a plain block."""
    if self.shortcut is not None:
      if self.drop_rate and not self.deterministic:
        y = drop_path(y, self.drop_rate, self.make_rng('drop_path'))
      y = y + Shortcut(out_features, self.strides, self.shortcut, self.conv, self.norm,
                       name='shortcut')(x)
    return self.act(y)


class BasicBlock(_Block):
  """Two 3x3 convs of `features` channels; the first has the stride (ResNet-18/34, CIFAR)."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv(self.features, (3, 3), self.strides, padding=1, name='conv1')(x)
    y = self.act(self.norm(name='bn1')(y))
    y = self.conv(self.features, (3, 3), 1, padding=1, name='conv2')(y)
    y = self.last_norm('bn2')(y)
    return self.merge(x, y, self.features)


class BottleneckBlock(_Block):
  """1x1 (`features`), 3x3 (`features`), 1x1 (4 * `features`) convs (ResNet-50/101/152).

  `stride_in_1x1`: the stride is on the first 1x1 (the paper, 'v1'); otherwise on the 3x3
  (torchvision, 'v1.5').
  """
  stride_in_1x1: bool = False
  expansion: int = 4

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s1, s2 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    y = self.conv(self.features, (1, 1), s1, padding=0, name='conv1')(x)
    y = self.act(self.norm(name='bn1')(y))
    y = self.conv(self.features, (3, 3), s2, padding=1, name='conv2')(y)
    y = self.act(self.norm(name='bn2')(y))
    y = self.conv(self.features * self.expansion, (1, 1), 1, padding=0, name='conv3')(y)
    y = self.last_norm('bn3')(y)
    return self.merge(x, y, self.features * self.expansion)
