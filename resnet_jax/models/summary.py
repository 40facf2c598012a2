"""Trainable parameters and multiply-adds of the zoo's models, computed from the models themselves.

    python -m resnet_jax.models.summary [--models resnet50,cifar_resnet56] [--json]

Nothing is allocated: shapes come from `jax.eval_shape`, and MACs from recording every
`nn.Conv` / `StemConv` / `nn.Dense` call with `flax.linen.intercept_methods`.
"""

import argparse
import functools
import json
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.layers import StemConv
from resnet_jax.models.registry import create_model, input_shape, model_names


def count_params(params: Any) -> int:
  """Number of scalars in a params tree (arrays or shape structs).

  Given a full variables dict, only its 'params' count (BN running statistics are not trained).
  """
  if isinstance(params, Mapping) and 'params' in params:
    params = params['params']
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))


def _layer_macs(module: nn.Module, x: Any, y: Any) -> int:
  if isinstance(module, nn.Conv):
    kernel = math.prod(module.kernel_size) * x.shape[-1] // module.feature_group_count
    return math.prod(y.shape) * kernel
  if isinstance(module, StemConv):   # the k x k / 2 conv it computes, not its folded form
    return math.prod(y.shape) * module.kernel_size ** 2 * x.shape[-1]
  if isinstance(module, nn.Dense):
    return math.prod(y.shape) * x.shape[-1]
  return 0


def trace(model: nn.Module, shape: Sequence[int], **kwargs) -> tuple[Any, int]:
  """(variable shapes, MACs) of `model.init` on one example of `shape` (e.g. (H, W, C)).

  MACs count convs (output elements x kernel area x input channels per group) and dense layers
  (inputs x outputs); `kwargs` go to `model.init` (e.g. `train=False`).
  """
  macs = []

  def record(next_fun, args, call_kwargs, context):
    y = next_fun(*args, **call_kwargs)
    if context.method_name == '__call__':
      macs.append(_layer_macs(context.module, args[0], y))
    return y

  def init(x):  # a fresh function per call: no trace cache hit can skip the interceptor
    return model.init(jax.random.key(0), x, **kwargs)

  with nn.intercept_methods(record):
    variables = jax.eval_shape(init, jax.ShapeDtypeStruct((1, *shape), jnp.float32))
  return variables, sum(macs)


def count_macs(model: nn.Module, shape: Sequence[int], **kwargs) -> int:
  """Multiply-adds of one forward pass on one example of `shape` (see `trace`)."""
  return trace(model, shape, **kwargs)[1]


def summarize(name: str, **options) -> dict[str, Any]:
  """name, input_shape, params, macs and gmacs of `create_model(name, **options)`."""
  shape = input_shape(name, options.get('in_channels'))
  variables, macs = trace(create_model(name, **options), shape, train=False)
  return {'name': name, 'input_shape': list(shape), 'params': count_params(variables),
          'macs': macs, 'gmacs': round(macs / 1e9, 4)}


@functools.lru_cache
def widest_within(name: str, budget: int, **options) -> int:
  """The largest `width` at which `create_model(name, width=..., **options)` has at most `budget`
  parameters (width: the first stage's channels of a CIFAR-family net)."""
  params = lambda width: summarize(name, width=width, **options)['params']
  if params(1) > budget:
    raise ValueError(f'{name} has more than {budget:,} parameters at any width')
  low, high = 1, 2
  while params(high) <= budget:
    low, high = high, 2 * high
  while high - low > 1:   # params(low) <= budget < params(high)
    middle = (low + high) // 2
    low, high = (middle, high) if params(middle) <= budget else (low, middle)
  return low


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """Aligned columns: model, input, parameters, GMACs."""
  lines = [('model', 'input', 'params', 'GMACs')]
  lines += [(r['name'], 'x'.join(map(str, r['input_shape'])), f"{r['params']:,}",
             f"{r['gmacs']:.3f}") for r in rows]
  widths = [max(len(line[i]) for line in lines) for i in range(4)]
  return '\n'.join(f'{a:<{widths[0]}}  {b:<{widths[1]}}  {c:>{widths[2]}}  {d:>{widths[3]}}'
                   for a, b, c, d in lines)


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(prog='python -m resnet_jax.models.summary', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--models', default=','.join(model_names()),
                 help='comma-separated model names (default: all)')
  p.add_argument('--json', action='store_true', help='one JSON object per line')
  p.add_argument('--shortcut', default=None, help="'A', 'B' or 'C' (default: the family's)")
  p.add_argument('--variant', default='v1.5', help="'v1' (paper) or 'v1.5'")
  p.add_argument('--num_classes', type=int, default=None)
  p.add_argument('--in_channels', type=int, default=None)
  args = p.parse_args(argv)
  options = dict(shortcut=args.shortcut, variant=args.variant, num_classes=args.num_classes,
                 in_channels=args.in_channels)
  names = [n for n in args.models.split(',') if n]
  unknown = [n for n in names if n not in model_names()]
  if unknown:
    p.error(f'unknown model(s) {", ".join(unknown)}; valid: {", ".join(model_names())}')
  rows = []
  for name in names:
    rows.append(summarize(name, **options))
    if args.json:
      print(json.dumps(rows[-1]), flush=True)
  if not args.json:
    print(format_table(rows))


if __name__ == '__main__':
  main()
