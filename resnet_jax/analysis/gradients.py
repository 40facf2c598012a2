"""Per-block gradient norms of plain vs residual nets, at initialisation and during training.

    python -m resnet_jax.analysis.gradients --model=cifar_plain56 --model=cifar_resnet56 \
        --steps=0,100,500 --data=fashion_mnist --out=runs/gradients

For each model, trains with the standard step on the same batches (same seed) and, at each
requested step, computes the norm of dL/dtheta over the parameters of every residual block
(`stage{i}_block{j}`), on one fixed probe batch in training mode (batch statistics, as in
training). Writes `gradients.json` ({model: {step: {block: norm}}}) and `gradients.png` (norm
against block depth, one colour per model, one line style per step) into --out.
"""

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

BLOCK = re.compile(r'stage(\d+)_block(\d+)$')


def block_names(params: dict[str, Any]) -> list[str]:
  """The residual blocks of a params tree, in depth order."""
  names = [k for k in params if BLOCK.match(k)]
  return sorted(names, key=lambda k: tuple(int(g) for g in BLOCK.match(k).groups()))


def block_grad_norms(model, config) -> Callable[[Any, dict[str, jax.Array]], dict[str, float]]:
  """`(state, batch) -> {block: ||dL/dtheta_block||}` in depth order, compiled once per model.

  The loss is the mean cross-entropy on `batch` as given (the probe: the first train batch, with
  the crops and flips its input made once; nothing random added here), without label smoothing or
  weight decay, in training mode (batch statistics).
  """
  from resnet_jax.data.device_ops import prepare_images
  from resnet_jax.train.steps import cross_entropy

  @jax.jit
  def norms(params, batch_stats, batch):
    images = prepare_images(batch['image'], None, train=False, data_config=config.data,
                            dtype=jnp.dtype(config.dtype))

    def loss_fn(params):
      logits, _ = model.apply({'params': params, 'batch_stats': batch_stats}, images,
                              train=True, mutable=['batch_stats'])
      return jnp.mean(cross_entropy(logits, batch['label'], 0.0))

    grads = jax.grad(loss_fn)(params)
    return {name: optax.tree.norm(grads[name]) for name in block_names(grads)}

  def measure_state(state, batch: dict[str, jax.Array]) -> dict[str, float]:
    out = norms(state.params, state.batch_stats, batch)   # a dict: keys come back sorted
    return {name: float(out[name]) for name in block_names(state.params)}

  return measure_state


def analysis_config(model: str, data: str, batch_size: int):
  from resnet_jax.config_base import base_config
  from resnet_jax.recipes import FASHION_MNIST, idx_recipe
  if data == 'fashion_mnist':
    c = idx_recipe(None, **FASHION_MNIST)
  else:
    c = base_config()
    c.data.update(fake_image_shape=(32, 32, 3), image_size=32, fake_num_examples=4096)
  c.model.name = model
  c.model.shortcut = ''
  c.batch_size = batch_size
  c.eval_batch_size = batch_size
  c.num_steps, c.num_epochs = 1, 0
  # The recipe's peak rate, held: the norms at a step must not depend on which other steps are
  # asked for (a schedule in fractions of the run would stretch with the last of them).
  c.schedule.update(name='constant', warmup=0, boundaries=())
  return c


def measure(model: str, steps: list[int], data: str, batch_size: int) -> dict[int, dict]:
  """Trains `model` up to max(steps), measuring the block gradient norms at each of `steps`."""
  from resnet_jax.train.trainer import create_trainer
  config = analysis_config(model, data, batch_size)
  config.num_steps = max(max(steps), 1)
  trainer, train_input, _ = create_trainer(config)
  grad_norms = block_grad_norms(trainer.model, config)
  state = trainer.init_state()
  batches = iter(train_input)
  probe = next(batches)
  out, step = {}, 0
  while True:
    if step in steps:
      out[step] = grad_norms(state, probe)
    if step >= max(steps):
      return out
    state, _ = trainer.train_step(state, next(batches))
    step += 1


def plot(results: dict[str, dict[int, dict]], path: Path) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 4.5))
  styles = ['-', '--', ':', '-.']
  for color, (model, by_step) in zip(plt.rcParams['axes.prop_cycle'].by_key()['color'],
                                     results.items()):
    for style, (step, norms) in zip(styles * 8, sorted(by_step.items())):
      ax.plot(np.arange(1, len(norms) + 1), list(norms.values()), style, color=color,
              label=f'{model}, step {step}')
  ax.set(yscale='log', xlabel='block (input to output)', ylabel='||dL/dθ_block||',
         title='Gradient norm per residual block')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def parse_steps(text: str) -> list[int]:
  """'0,100,500' -> [0, 100, 500] (sorted, unique, non-negative)."""
  try:
    steps = sorted({int(s) for s in text.split(',') if s.strip()})
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected comma-separated integers, got {text!r}')
  if not steps or steps[0] < 0:
    raise argparse.ArgumentTypeError(f'expected non-negative integers, got {text!r}')
  return steps


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m resnet_jax.analysis.gradients',
                                   description='Per-block gradient norms of several models.')
  parser.add_argument('--model', action='append', required=True,
                      help='model name to compare (repeat the flag)')
  parser.add_argument('--steps', type=parse_steps, default=[0],
                      help='comma-separated training steps to measure at (default: 0)')
  parser.add_argument('--data', choices=['fake', 'fashion_mnist'], default='fake')
  parser.add_argument('--batch_size', type=int, default=128, help='global batch size')
  parser.add_argument('--out', type=Path, default=Path('gradients'), help='output directory')
  args = parser.parse_args(argv)
  args.out.mkdir(parents=True, exist_ok=True)
  results = {m: measure(m, args.steps, args.data, args.batch_size) for m in args.model}
  (args.out / 'gradients.json').write_text(json.dumps(
      {m: {str(s): norms for s, norms in r.items()} for m, r in results.items()}, indent=1))
  plot(results, args.out / 'gradients.png')
  for m, r in results.items():
    for s, norms in sorted(r.items()):
      v = list(norms.values())
      print(f'{m} step {s}: first block {v[0]:.3e}, last block {v[-1]:.3e}, '
            f'ratio first/last {v[0] / v[-1]:.3g}')
  print(f'wrote {args.out / "gradients.json"} and {args.out / "gradients.png"}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
