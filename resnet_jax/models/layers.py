"""Layers shared by the blocks: batch norm with ghost batches, the parameter-free shortcut."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# He et al. (2015, "Delving deep into rectifiers") normal init over the fan-out, as torchvision.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class BatchNorm(nn.Module):
  """Batch normalisation over all axes but the last, optionally over ghost batches.

  Variables are named as in `flax.linen.BatchNorm` (params `scale`, `bias`; batch_stats `mean`,
  `var`). Statistics are computed in float32 in one pass (mean and mean of squares) whatever the
  input dtype; the output has dtype `dtype` (None: the input's).

  With `group_size` g the batch [N, ...] is split into N/g groups of g consecutive examples, each
  normalised with its own statistics (ghost BN); the running averages track the mean of the group
  statistics. None: one group, the whole batch. Under `jax.jit` with the batch sharded over a
  mesh, these means are global, so no `axis_name` is needed.
  """
  use_running_average: bool | None = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  group_size: int | None = None
  dtype: Any = None
  param_dtype: Any = jnp.float32
  scale_init: nn.initializers.Initializer = nn.initializers.ones
  bias_init: nn.initializers.Initializer = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    use_running_average = nn.merge_param(
        'use_running_average', self.use_running_average, use_running_average)
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
    scale = self.param('scale', self.scale_init, features, self.param_dtype)
    bias = self.param('bias', self.bias_init, features, self.param_dtype)

    x32 = x.astype(jnp.float32)
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      n = x.shape[0]
      g = self.group_size or n
      if n % g:
        raise ValueError(f'batch size {n} is not a multiple of the BN group size {g}')
      x32 = x32.reshape(n // g, g, *x.shape[1:])
      axes = tuple(range(1, x32.ndim - 1))
      mean = jnp.mean(x32, axes, keepdims=True)
      var = jnp.maximum(jnp.mean(jnp.square(x32), axes, keepdims=True) - jnp.square(mean), 0.0)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * jnp.mean(mean, axis=(0, *axes))
        ra_var.value = m * ra_var.value + (1 - m) * jnp.mean(var, axis=(0, *axes))
    mul = scale.astype(jnp.float32) * jax.lax.rsqrt(var + self.epsilon)
    y = x32 * mul + (bias.astype(jnp.float32) - mean * mul)
    return y.reshape(x.shape).astype(self.dtype or x.dtype)


def check_choice(what: str, value: Any, valid: tuple) -> None:
  """Raises a ValueError naming `what` and the valid values unless `value` is one of them."""
  if value not in valid:
    raise ValueError(f'unknown {what} {value!r}; valid: {list(valid)}')


def pad_channels(x: jax.Array, features: int) -> jax.Array:
  """Zero-pads the last axis of `x` up to `features` channels (new channels at the end)."""
  extra = features - x.shape[-1]
  if extra < 0:
    raise ValueError(f'cannot pad {x.shape[-1]} channels down to {features}')
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)])


def zero_pad_shortcut(x: jax.Array, features: int, strides: int) -> jax.Array:
  """Option A: subsample by `strides` (`x[:, ::s, ::s, :]`) and zero-pad the new channels."""
  return pad_channels(x[:, ::strides, ::strides, :], features)
