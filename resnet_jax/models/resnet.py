"""The residual network (and its plain twin) of He et al. 2015, for all three families.

    stem: conv k x k / stem_strides (width channels) + BN + ReLU [+ 3x3/2 max-pool]
          (a stride-2 stem runs as a space-to-depth conv: same parameters, same result)
    stage i: stage_sizes[i] blocks of width * 2**i channels, the first with stage_strides[i]
    head: global average pool + Dense, logits in float32

Parameter names: `stem_conv`, `stem_bn`, `stage{i}_block{j}/{conv1,bn1,...,shortcut}`, `head`
(1-based i, j).
"""

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.blocks import SHORTCUTS, BasicBlock, BottleneckBlock
from resnet_jax.models.layers import BatchNorm, StemConv, check_choice, conv_kernel_init

VARIANTS = ('v1', 'v1.5')


class ResNet(nn.Module):
  """A ResNet; `residual=False` gives the plain net with the same convs.

  `variant` places a bottleneck's stride: 'v1' on the first 1x1 (paper), 'v1.5' on the 3x3.
  `zero_init_residual` starts each residual branch's last BN scale at 0 (no effect on plain nets,
  which have no identity to fall back on). `dtype` is the compute dtype, `param_dtype` the
  storage dtype. `bn_group_size`: ghost BN over groups of this many examples (None: whole batch).
  `drop_path_rate`: stochastic depth in training, the residual branch of the l-th of L blocks
  dropped with probability drop_path_rate * l / L (Huang et al. 2016's linear rule; the rng
  stream 'drop_path').
  """
  stage_sizes: Sequence[int]
  num_classes: int
  bottleneck: bool = False
  width: int = 64
  stage_strides: Sequence[int] = (1, 2, 2, 2)
  stem_kernel: int = 7
  stem_strides: int = 2
  stem_pool: bool = True
  shortcut: str = 'B'
  residual: bool = True
  variant: str = 'v1.5'
  zero_init_residual: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  bn_group_size: int | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  drop_path_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    check_choice('shortcut option', self.shortcut, SHORTCUTS)
    check_choice('variant', self.variant, VARIANTS)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype,
                             param_dtype=self.param_dtype, kernel_init=conv_kernel_init)
    norm = functools.partial(BatchNorm, use_running_average=not train, momentum=self.bn_momentum,
                             epsilon=self.bn_epsilon, group_size=self.bn_group_size,
                             dtype=self.dtype, param_dtype=self.param_dtype)
    if self.bottleneck:
      block = functools.partial(BottleneckBlock, stride_in_1x1=self.variant == 'v1')
    else:
      block = BasicBlock

    k = self.stem_kernel
    if self.stem_strides == 2:
      x = StemConv(self.width, k, self.dtype, self.param_dtype, name='stem_conv')(x)
    else:
      x = conv(self.width, (k, k), self.stem_strides, padding=k // 2, name='stem_conv')(x)
    x = nn.relu(norm(name='stem_bn')(x))
    if self.stem_pool:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    num_blocks, l = sum(self.stage_sizes), 0
    for i, (size, strides) in enumerate(zip(self.stage_sizes, self.stage_strides)):
      for j in range(size):
        l += 1
        x = block(features=self.width * 2**i, strides=strides if j == 0 else 1, conv=conv,
                  norm=norm, act=nn.relu, shortcut=self.shortcut if self.residual else None,
                  zero_init_last=self.zero_init_residual and self.residual,
                  drop_rate=self.drop_path_rate * l / num_blocks, deterministic=not train,
                  name=f'stage{i + 1}_block{j + 1}')(x)
    x = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)
    x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype, name='head')(x)
    return x.astype(jnp.float32)
