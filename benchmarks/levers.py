"""The performance levers of docs/benchmarks.md, measured one at a time against a baseline.

    python benchmarks/levers.py --out DIR [--only rn50_base,rn50_b512]

Each case runs `resnet_jax.benchmark` in its own process: the same step with one thing changed
(a batch size, an XLA flag, or an experimental patch applied only in that process). The baseline
cases also print a profile: where the device time of a step goes, by kernel category.
Every case's log and JSON land under --out; a Markdown table is printed last.
"""

import argparse
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

RN50 = ['--config=configs/imagenet.py:resnet50,modern', '--config.batch_size=256']
C56 = ['--config=configs/cifar10.py:resnet56', '--config.dtype=bfloat16',
       '--config.label_smoothing=0.1', '--num_classes=10', '--config.batch_size=128',
       '--steps=100']
# The fast Fashion-MNIST recipe of docs/results.md (ResNet-20 width 32, batch 512, bf16): its
# cases are about compile time, which decides whether it trains to 95% in 30 s from a cold start.
FM = ['--config=configs/fashion_mnist.py', '--config.data.fake_image_shape=(28,28,1)',
      '--config.model.width=32', '--config.batch_size=512', '--config.dtype=bfloat16',
      '--config.label_smoothing=0.1', '--config.optimizer.nesterov=True', '--num_classes=10',
      '--steps=50', '--windows=3']
# XLA's own default set of CUDA-graph commands, which leaves out convolutions: XLA_FLAGS that name
# the flag keep runtime.configure from adding them (its default since 2026-12-06).
CONVS_OUTSIDE_GRAPHS = '--xla_gpu_enable_command_buffer=-CONVOLUTION'

# name: (benchmark arguments, extra XLA flags, patch)
CASES = {
    'rn50_base': (RN50 + ['--profile_dir={out}/prof_rn50'], '', ''),
    'rn50_b512': (RN50 + ['--config.batch_size=512'], '', ''),
    'rn50_b1024': (RN50 + ['--config.batch_size=1024', '--steps=10'], '', ''),
    'rn50_plain_stem': (RN50, '', 'plain_stem'),
    'rn50_pool_custom_vjp': (RN50, '', 'pool_custom_vjp'),
    'rn50_pool_slices': (RN50, '', 'pool_slices'),
    'rn50_no_nan_guard': (RN50, '', 'no_nan_guard'),
    'rn50_latency_sched': (RN50, '--xla_gpu_enable_latency_hiding_scheduler=true', ''),
    'rn50_dot_1x1': (RN50, '', 'dot_1x1'),
    'rn50_dot_1x1_cudnn_gemm': (RN50, '--xla_gpu_cudnn_gemm_fusion_level=2', 'dot_1x1'),
    'rn50_block_level_fusion': (
        RN50, '--xla_gpu_experimental_enable_fusion_block_level_rewriter=true', ''),
    # BN [+ residual] + ReLU trained through one custom VJP: the 8-pass memory floor.
    'rn50_fused_bn': (RN50, '', 'fused_bn'),
    'rn50_no_cmd_buffer': (RN50, '--xla_gpu_enable_command_buffer=', ''),
    'rn50_convs_outside_graphs': (RN50, CONVS_OUTSIDE_GRAPHS, ''),
    # cuDNN fusions that include convolutions (level 3): the BN + ReLU around a conv fused into it.
    'rn50_cudnn_conv_fusion': (RN50, '--xla_gpu_cudnn_gemm_fusion_level=3', ''),
    # GEMM choices for the 1x1 convs (13% of the step, docs/benchmarks.md): cuBLASLt, cuBLAS
    # instead of Triton, and Triton's exhaustive tiling search. Not measured yet.
    'rn50_cublaslt': (RN50, '--xla_gpu_enable_cublaslt=true', ''),
    'rn50_no_triton_gemm': (RN50, '--xla_gpu_enable_triton_gemm=false', ''),
    'rn50_exhaustive_tiling': (RN50, '--xla_gpu_exhaustive_tiling_search=true', ''),
    'c56_base': (C56 + ['--profile_dir={out}/prof_c56'], '', ''),
    'c56_fused_bn': (C56, '', 'fused_bn'),
    'c56_no_nan_guard': (C56, '', 'no_nan_guard'),
    'c56_no_cmd_buffer': (C56, '--xla_gpu_enable_command_buffer=', ''),
    # XLA's own default command buffers (CUDA graphs), without the convolutions that
    # runtime.configure adds: each cuDNN conv (fprop, dgrad, wgrad: ~165 a ResNet-56 step) is
    # launched by the host between graph pieces, and the GPU idled 58% of the step (42% busy;
    # docs/benchmarks.md, 2026-12-06).
    'c56_convs_outside_graphs': (C56 + ['--profile_dir={out}/prof_c56_outside'],
                                 CONVS_OUTSIDE_GRAPHS, ''),
    'c56_b512': (C56 + ['--config.batch_size=512'], '', ''),
    'c56_b512_convs_outside_graphs': (C56 + ['--config.batch_size=512'], CONVS_OUTSIDE_GRAPHS, ''),
    'c56_graph_min1': (C56, '--xla_gpu_graph_min_graph_size=1', ''),
    # Fewer kernels per step, if cuDNN fuses the BN + ReLU around each conv into it.
    'c56_cudnn_conv_fusion': (C56, '--xla_gpu_cudnn_gemm_fusion_level=3', ''),
    'fm_base': (FM, '', ''),
    'fm_f32': (FM + ['--config.dtype=float32'], '', ''),
    'fm_autotune1': (FM, '--xla_gpu_autotune_level=1', ''),
    'fm_autotune0': (FM + ['--warmup=0', '--windows=1', '--steps=2'], '--xla_gpu_autotune_level=0',
                     ''),
    'fm_no_triton_gemm': (FM, '--xla_gpu_enable_triton_gemm=false', ''),
    'fm_max_solutions4': (FM, '--xla_gpu_autotune_max_solutions=4', ''),
    'fm_deterministic': (FM, '--xla_gpu_deterministic_ops=true', ''),
    'fm_parallelism1': (FM, '--xla_gpu_force_compilation_parallelism=1', ''),
    'fm_no_cmd_buffer': (FM, '--xla_gpu_enable_command_buffer=', ''),
    'fm_convs_outside_graphs': (FM, CONVS_OUTSIDE_GRAPHS, ''),
}


def strided_conv(x, kernel):
  """The stem conv as XLA's plain 7x7/2 convolution (before the space-to-depth form)."""
  p = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(x, kernel, (2, 2), [(p, p), (p, p)],
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def max_pool_by_slices(x, window, stride, padding):
  """Max-pool as the max of window^2 strided slices, differentiated by JAX (ties share)."""
  x = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
              constant_values=-jnp.inf)
  h = (x.shape[1] - window) // stride + 1
  w = (x.shape[2] - window) // stride + 1
  out = None
  for dy in range(window):
    for dx in range(window):
      s = x[:, dy:dy + stride * (h - 1) + 1:stride, dx:dx + stride * (w - 1) + 1:stride, :]
      out = s if out is None else jnp.maximum(out, s)
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def first_max_pool(x, window=3, stride=2, padding=1):
  """Max-pooling over window x window patches of [N, H, W, C], -inf padding (as nn.max_pool).

  The gradient goes to the first maximum of each window (as in PyTorch), computed by one fused
  gather-free pass instead of XLA's select-and-scatter. Measured slower on the H100 (one 2.7 ms
  fusion instead of 2.1 ms); kept here as the record of that lever.
  """
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), pad)


def _max_pool_fwd(x, window, stride, padding):
  y = first_max_pool(x, window, stride, padding)
  return y, (x, y)


def _max_pool_bwd(window, stride, padding, residuals, g):
  x, y = residuals
  xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)),
               constant_values=-jnp.inf)
  (_, hp, wp, _), (_, out_h, out_w, _) = xp.shape, y.shape
  taken = jnp.zeros(y.shape, bool)
  dx = jnp.zeros(xp.shape, g.dtype)
  for dy in range(window):
    for dxo in range(window):   # window order: the first maximum takes the gradient
      rows, cols = dy + stride * (out_h - 1) + 1, dxo + stride * (out_w - 1) + 1
      hit = (xp[:, dy:rows:stride, dxo:cols:stride, :] == y) & ~taken
      taken = taken | hit
      # Back to input positions: interior padding spreads the window grid out by `stride`.
      dx = dx + jax.lax.pad(jnp.where(hit, g, 0), jnp.zeros((), g.dtype),
                            ((0, 0, 0), (dy, hp - rows, stride - 1), (dxo, wp - cols, stride - 1),
                             (0, 0, 0)))
  return (dx[:, padding:padding + x.shape[1], padding:padding + x.shape[2], :],)


first_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


class Dot1x1(nn.Module):
  """A 1x1 convolution without bias as `dot_general` (strided: subsample first), `nn.Conv`'s
  parameter: XLA's GEMM fusion may then fuse the BN + ReLU that feeds it into the GEMM."""
  features: int
  strides: int | tuple[int, int] = 1
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = None

  @nn.compact
  def __call__(self, x):
    s = self.strides if isinstance(self.strides, int) else self.strides[0]
    kernel = self.param('kernel', self.kernel_init, (1, 1, x.shape[-1], self.features),
                        self.param_dtype)
    return jnp.einsum('nhwc,cf->nhwf', x[:, ::s, ::s].astype(self.dtype),
                      kernel[0, 0].astype(self.dtype))


def conv_with_dot_1x1(features, kernel_size, strides=1, *, padding, name, use_bias, dtype,
                      param_dtype, kernel_init, conv=nn.Conv):
  """`nn.Conv`'s constructor as the ResNet calls it, with 1x1 convs as `Dot1x1`."""
  if tuple(kernel_size) == (1, 1):
    return Dot1x1(features, strides, dtype, param_dtype, kernel_init, name=name)
  return conv(features, kernel_size, strides, padding=padding, name=name, use_bias=use_bias,
              dtype=dtype, param_dtype=param_dtype, kernel_init=kernel_init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def fused_bn(x, scale, bias, residual, epsilon, relu):
  """Training-mode BN of x [..., C] [+ residual] [-> ReLU]; returns (y, batch mean, batch var).

  The backward pass reads only x and the incoming gradient (plus y where a residual was added):
  one reduction pass for the two per-channel sums, one elementwise pass for dx, with the ReLU
  mask recomputed from x: the 8 passes over each BN input per step that docs/benchmarks.md
  counts as the floor. Measured slower than XLA's own differentiation on the H100 (ResNet-50
  43.21 against 41.64 ms a step); kept here as the record of that lever.
  """
  return _fused_bn_fwd(x, scale, bias, residual, epsilon, relu)[0]


def _fused_bn_fwd(x, scale, bias, residual, epsilon, relu):
  axes = tuple(range(x.ndim - 1))
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axes)
  var = jnp.maximum(jnp.mean(jnp.square(x32), axes) - jnp.square(mean), 0.0)
  rstd = jax.lax.rsqrt(var + epsilon)
  mul = scale * rstd
  z = x32 * mul + (bias - mean * mul)
  if residual is not None:
    z = z + residual.astype(jnp.float32)
  y = (jnp.maximum(z, 0.0) if relu else z).astype(x.dtype)
  return (y, mean, var), (x, y if residual is not None else None, residual, mean, rstd, scale,
                          bias)


def _fused_bn_bwd(epsilon, relu, saved, cotangents):
  x, y, residual, mean, rstd, scale, bias = saved
  g, g_mean, g_var = cotangents
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  x32, dz = x.astype(jnp.float32), g.astype(jnp.float32)
  mul = scale * rstd
  if relu:   # y > 0 iff z > 0; without a residual z is recomputed from x, already being read
    alive = y > 0 if residual is not None else x32 * mul + (bias - mean * mul) > 0
    dz = jnp.where(alive, dz, 0.0)
  xhat = (x32 - mean) * rstd
  sum_dz, sum_dz_xhat = jnp.sum(dz, axes), jnp.sum(dz * xhat, axes)
  dx = (mul * (dz - (sum_dz + xhat * sum_dz_xhat) / n) + g_mean / n
        + g_var * 2 * (x32 - mean) / n)
  d_residual = None if residual is None else dz.astype(residual.dtype)
  return (dx.astype(x.dtype), sum_dz_xhat.astype(scale.dtype), sum_dz.astype(bias.dtype),
          d_residual)


fused_bn.defvjp(_fused_bn_fwd, _fused_bn_bwd)


def fused_model_classes():
  """BatchNorm taking the block's residual and ReLU (trained through `fused_bn`), and blocks
  that hand them to it; same variables and names as the package's."""
  from resnet_jax.models import blocks, layers

  class FusedBatchNorm(layers.BatchNorm):
    @nn.compact
    def __call__(self, x, residual=None, relu=False, use_running_average=None):
      if nn.merge_param('use_running_average', self.use_running_average, use_running_average
                        ) or self.group_size:
        y = super().__call__(x, use_running_average)
        y = y if residual is None else y + residual
        return nn.relu(y) if relu else y
      features = (x.shape[-1],)
      ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
      ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
      scale = self.param('scale', self.scale_init, features, self.param_dtype)
      bias = self.param('bias', self.bias_init, features, self.param_dtype)
      y, mean, var = fused_bn(x.astype(self.dtype or x.dtype), scale.astype(jnp.float32),
                              bias.astype(jnp.float32), residual, self.epsilon, relu)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * mean
        ra_var.value = m * ra_var.value + (1 - m) * var
      return y

  def tail(block, x, y, out_features, name):
    """The last BN, the shortcut's add and the ReLU, in one `fused_bn`."""
    residual = None
    if block.shortcut is not None:
      residual = blocks.Shortcut(out_features, block.strides, block.shortcut, block.conv,
                                 block.norm, name='shortcut')(x)
    return block.last_norm(name)(y, residual, relu=True)

  class FusedBasicBlock(blocks.BasicBlock):
    @nn.compact
    def __call__(self, x):
      y = self.conv(self.features, (3, 3), self.strides, padding=1, name='conv1')(x)
      y = self.norm(name='bn1')(y, relu=True)
      y = self.conv(self.features, (3, 3), 1, padding=1, name='conv2')(y)
      return tail(self, x, y, self.features, 'bn2')

  class FusedBottleneckBlock(blocks.BottleneckBlock):
    @nn.compact
    def __call__(self, x):
      s1, s2 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
      y = self.conv(self.features, (1, 1), s1, padding=0, name='conv1')(x)
      y = self.norm(name='bn1')(y, relu=True)
      y = self.conv(self.features, (3, 3), s2, padding=1, name='conv2')(y)
      y = self.norm(name='bn2')(y, relu=True)
      y = self.conv(self.features * self.expansion, (1, 1), 1, padding=0, name='conv3')(y)
      return tail(self, x, y, self.features * self.expansion, 'bn3')

  return FusedBatchNorm, FusedBasicBlock, FusedBottleneckBlock


def apply_patch(name: str) -> None:
  """Changes the package in this process only, for one experimental case."""
  from resnet_jax.models import layers, resnet
  if name == 'plain_stem':
    layers.space_to_depth_conv = strided_conv
  elif name == 'pool_custom_vjp':
    resnet.nn.max_pool = lambda x, window_shape, strides, padding: first_max_pool(
        x, window_shape[0], strides[0], padding[0][0])
  elif name == 'pool_slices':
    resnet.nn.max_pool = lambda x, window_shape, strides, padding: max_pool_by_slices(
        x, window_shape[0], strides[0], padding[0][0])
  elif name == 'fused_bn':
    resnet.BatchNorm, resnet.BasicBlock, resnet.BottleneckBlock = fused_model_classes()
  elif name == 'dot_1x1':
    resnet.nn.Conv = conv_with_dot_1x1
  elif name == 'no_nan_guard':
    import jax.numpy as jnp

    from resnet_jax.train import steps

    class FiniteJnp:   # jax.numpy, except that every loss counts as finite
      isfinite = staticmethod(lambda x: jnp.bool_(True))

      def __getattr__(self, attr):
        return getattr(jnp, attr)
    steps.jnp = FiniteJnp()
  elif name:
    raise ValueError(f'unknown patch {name!r}')


def run_case(name: str, out: Path, tag: str) -> dict | None:
  """Runs case `name`, writing `tag`.log (the name, or name_K for its Kth run in one call)."""
  args, xla_flags, patch = CASES[name]
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {xla_flags}".strip())
  cmd = [sys.executable, __file__, '--patch', patch, '--'] + [a.format(out=out) for a in args]
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
  (out / f'{tag}.log').write_text(proc.stdout + '\n' + proc.stderr)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  if proc.returncode or not lines:
    print(f'{name}: failed (exit {proc.returncode}); see {out / tag}.log', flush=True)
    return None
  print(proc.stdout, flush=True)
  return json.loads(lines[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', type=Path)
  p.add_argument('--only', default='')
  p.add_argument('--patch', default=None, help=argparse.SUPPRESS)
  a, rest = p.parse_known_args()
  if a.patch is not None:   # a child process: patch, then run the benchmark with the rest
    apply_patch(a.patch)
    from absl import app

    from resnet_jax import benchmark
    app.run(benchmark.main, argv=[sys.argv[0]] + [r for r in rest if r != '--'])
    return
  if a.out is None:
    p.error('--out is required')
  a.out.mkdir(parents=True, exist_ok=True)
  names = a.only.split(',') if a.only else list(CASES)
  unknown = set(names) - set(CASES)
  if unknown:
    p.error(f'unknown cases {sorted(unknown)}; valid: {list(CASES)}')
  rows = ['| case | images/s | step ms | compile s | peak GiB |', '|---|---:|---:|---:|---:|']
  failed = 0
  for i, name in enumerate(names):
    tag = name if names.count(name) == 1 else f'{name}_{names[:i + 1].count(name)}'
    r = run_case(name, a.out, tag)
    failed += r is None
    if r:
      (a.out / f'{tag}.json').write_text(json.dumps(r, indent=1))
      rows.append(f"| {name} | {r['images_per_sec']:,.0f} | {r['step_ms']:.2f} | "
                  f"{r['compile_s']:.1f} | {r['peak_memory_gib'] or float('nan'):.1f} |")
  (a.out / 'levers.md').write_text('\n'.join(rows) + '\n')
  print('\n'.join(rows))
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
