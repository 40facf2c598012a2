"""Standard deviations of layer responses of trained runs (He et al. 2015, Sec. 4.2, Fig. 7).

    python -m resnet_jax.analysis.responses runs/deg/name-cifar_plain20 \
        runs/deg/name-cifar_resnet20 runs/deg/name-cifar_resnet56 --out=runs/responses

A layer's response is the output of a 3x3 conv after its BN, before the ReLU or the addition (the
paper's definition). For each run, at its latest (or `--checkpoint=best`) checkpoint, in test mode
(the BN's running statistics), over the run's eval split (`--data_dir` where the dataset has
moved since the run): the standard deviation of every such layer's output values (all images,
positions and channels). Writes `responses.json` ({run: [std per layer, input to output]}) and
`responses.png`: std against layer index in network order (top) and sorted by magnitude
(bottom), one line per run, as Fig. 7. The paper found the residual nets' responses smaller
than the plain nets', and smaller the deeper the net; the tool reports what the runs show.
"""

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.report import short_names

ModulePath = tuple[str, ...]   # a module's path in the variables tree
_BLOCK_BN = re.compile(r'stage(\d+)_block(\d+)$')


def response_layers(params: dict[str, Any]) -> list[ModulePath]:
  """The BNs that follow a 3x3 conv (`bnK` after `convK`, `stem_bn` after `stem_conv`), input to
  output; projection shortcuts (1x1) are left out."""
  def is_3x3(scope: dict[str, Any], bn: str) -> bool:
    conv = scope.get(bn.replace('bn', 'conv'), {}).get('kernel')
    return conv is not None and tuple(conv.shape[:2]) == (3, 3)

  layers: list[tuple[tuple[int, ...], ModulePath]] = []
  if is_3x3(params, 'stem_bn'):
    layers.append(((0,), ('stem_bn',)))
  for name, block in params.items():
    if match := _BLOCK_BN.match(name):
      stage, index = map(int, match.groups())
      layers += [((1, stage, index, int(bn[2:])), (name, bn)) for bn in block
                 if re.fullmatch(r'bn\d+', bn) and is_3x3(block, bn)]
  return [path for _, path in sorted(layers)]


def response_moments(model: Any, config: Any, layers: Sequence[ModulePath]):
  """`(variables, batch) -> [count, sum, sum of squares]` per layer over the batch's real
  examples (float32), compiled once."""
  from resnet_jax.data.device_ops import prepare_images
  from resnet_jax.models.layers import BatchNorm

  @jax.jit
  def moments(variables, batch):
    images = prepare_images(batch['image'], None, train=False, data_config=config.data,
                            dtype=jnp.dtype(config.dtype))
    _, captured = model.apply(variables, images, train=False, mutable=['intermediates'],
                              capture_intermediates=lambda m, _: isinstance(m, BatchNorm))
    mask = batch['mask'].astype(jnp.float32)
    out = []
    for path in layers:
      node = captured['intermediates']
      for key in path:
        node = node[key]
      y = node['__call__'][0].astype(jnp.float32)
      w = mask.reshape(-1, *([1] * (y.ndim - 1)))
      out.append(jnp.stack([jnp.sum(mask) * (y[0].size), jnp.sum(y * w), jnp.sum(y * y * w)]))
    return jnp.stack(out)

  return moments


def run_responses(workdir: Path, checkpoint: str = 'latest', data_dir: str = '') -> list[float]:
  """The std of each response layer of the run in `workdir`, input to output, over its eval
  split (read from `data_dir` where given, else from where the run read it)."""
  from resnet_jax import data, parallel
  from resnet_jax.train.restore import restore_trained
  trained = restore_trained(workdir, checkpoint)
  if data_dir:
    trained.config.data.data_dir = data_dir
  layers = response_layers(trained.variables['params'])
  if not layers:
    raise ValueError(f'{workdir}: model {trained.config.model.name} has no 3x3 conv + BN layers')
  eval_input = data.create_input(trained.config, parallel.create_mesh(), train=False)
  moments = response_moments(trained.model, trained.config, layers)
  totals = np.zeros((len(layers), 3))
  for batch in eval_input:
    totals += np.asarray(moments(trained.variables, batch), np.float64)
  count, total, squares = totals.T
  mean = total / count
  return np.sqrt(np.maximum(squares / count - mean ** 2, 0.0)).tolist()


def plot(results: dict[str, list[float]], path: Path) -> None:
  from matplotlib.figure import Figure
  from resnet_jax.plots import save
  fig = Figure(figsize=(7, 7), layout='constrained')
  top, bottom = fig.subplots(2, 1)
  for name, stds in results.items():
    x = np.arange(1, len(stds) + 1)
    top.plot(x, stds, label=name)
    bottom.plot(x, sorted(stds, reverse=True), label=name)
  top.set(xlabel='layer index (original)', ylabel='std')
  bottom.set(xlabel='layer index (sorted by magnitude)', ylabel='std')
  top.set_title('Standard deviation of the 3x3 layers\' responses (after BN, before ReLU/add)')
  for ax in (top, bottom):
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize='small')
  save(fig, path)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m resnet_jax.analysis.responses',
                                   description="Std of the layer responses of trained runs "
                                               "(the paper's Fig. 7).")
  parser.add_argument('workdirs', nargs='+', type=Path, metavar='WORKDIR', help='training runs')
  parser.add_argument('--checkpoint', choices=['latest', 'best'], default='latest')
  parser.add_argument('--out', type=Path, default=Path('responses'), help='output directory')
  parser.add_argument('--data_dir', default='',
                      help="the runs' dataset directory, where it is not where they read it")
  args = parser.parse_args(argv)
  try:
    results = {n: run_responses(w, args.checkpoint, args.data_dir)
               for n, w in zip(short_names(args.workdirs), args.workdirs)}
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  args.out.mkdir(parents=True, exist_ok=True)
  (args.out / 'responses.json').write_text(json.dumps(results, indent=1))
  plot(results, args.out / 'responses.png')
  for name, stds in results.items():
    print(f'{name}: {len(stds)} layers, std mean {np.mean(stds):.3f}, first {stds[0]:.3f}, '
          f'last {stds[-1]:.3f}')
  print(f'wrote {args.out / "responses.json"} and {args.out / "responses.png"}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
