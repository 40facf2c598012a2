"""Layers shared by the blocks: batch norm with ghost batches, the parameter-free shortcut,
stochastic depth."""

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


def space_to_depth_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """A k x k (odd k) convolution with stride 2 and padding k // 2, computed as a stride-1 conv.

  Both are padded to an even size and folded into 2x2 blocks: the input [N, H, W, C] (H, W even)
  becomes [N, H/2 + k//2, W/2 + k//2, 4C] and the kernel [k+1, k+1, C, F] (a zero last row and
  column) becomes [(k+1)/2, (k+1)/2, 4C, F]. Same result, but a 4x4 conv over 12 channels uses
  the tensor cores far better than a 7x7/2 conv over 3 (the ResNet stem; MLPerf's trick).
  """
  n, h, w, c = x.shape
  k = kernel.shape[0]
  if k % 2 == 0 or h % 2 or w % 2:
    raise ValueError(f'space_to_depth_conv needs an odd kernel and even H, W; got kernel {k} '
                     f'and input {x.shape}')
  p = k // 2
  x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  hb, wb = (h + 2 * p) // 2, (w + 2 * p) // 2
  x = x.reshape(n, hb, 2, wb, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hb, wb, 4 * c)
  kb = (k + 1) // 2
  kernel = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
  kernel = kernel.reshape(kb, 2, kb, 2, c, -1).transpose(0, 2, 1, 3, 4, 5).reshape(kb, kb, 4 * c, -1)
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class StemConv(nn.Module):
  """The k x k / 2 stem conv without bias, run as `space_to_depth_conv` on even-sized inputs.

  Its parameter is the usual `kernel` [k, k, C, features] (same name and shape as `nn.Conv`'s),
  so checkpoints and converted torchvision weights do not see the difference.
  """
  features: int
  kernel_size: int
  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param('kernel', conv_kernel_init, (k, k, x.shape[-1], self.features),
                        self.param_dtype)
    x, kernel = x.astype(self.dtype or x.dtype), kernel.astype(self.dtype or x.dtype)
    if x.shape[1] % 2 == 0 and x.shape[2] % 2 == 0:
      return space_to_depth_conv(x, kernel)
    return jax.lax.conv_general_dilated(x, kernel, (2, 2), [(k // 2, k // 2)] * 2,
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


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


def drop_path(y: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """Stochastic depth (Huang et al. 2016) on a residual branch `y`: each example's branch is
  zeroed with probability `rate` and scaled by 1 / (1 - rate) where kept, so that the full
  branch is its expected value at evaluation."""
  keep = 1.0 - rate
  kept = jax.random.bernoulli(rng, keep, (y.shape[0],) + (1,) * (y.ndim - 1))
  return jnp.where(kept, y / jnp.asarray(keep, y.dtype), jnp.zeros((), y.dtype))
