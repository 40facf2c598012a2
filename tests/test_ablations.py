"""Every ablation sweep config (configs/ablations/) is wired right: each point builds its model.

Cheap on purpose: fake data, batch 8 over the 8 simulated devices, the recipe's image size capped
at 32, 2 steps, and the model of every grid point the real one. Every point of the CIFAR-10 and
ImageNet sweeps is initialised abstractly (`jax.eval_shape`) and checked against its config
(layers, shortcut projections, warm-up). A real 2-step run compiles for 20-40 s on one CPU core,
so one point (CIFAR ResNet-20, option A) trains 2 real steps with eval and checkpoint, and one
point of every other sweep file has its train step traced with `jax.eval_shape`. The
`:fashion_mnist` sweeps have the same models; their points are checked against the
Fashion-MNIST recipe.
"""

import json
import re
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from resnet_jax.analysis.gradients import BLOCK, block_names
from resnet_jax.recipes import load_recipe
from resnet_jax.sweep import apply_overrides, load_sweep
from resnet_jax.train.loop import train_and_evaluate
from resnet_jax.train.trainer import create_trainer
from resnet_jax.train.optim import peak_learning_rate
from resnet_jax.writers import read_metrics
from tests.fast_keys import rbg_keys  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = ROOT / 'configs' / 'ablations'
SWEEPS = ['degradation.py', 'degradation.py:fashion_mnist', 'depth_cifar.py',
          'depth_cifar.py:fashion_mnist', 'shortcuts_cifar.py', 'shortcuts_cifar.py:fashion_mnist',
          'shortcuts_imagenet.py', 'plain_vs_residual_imagenet.py']
CHEAP_SWEEPS = [s for s in SWEEPS if 'fashion_mnist' not in s]
TRAINED_POINT = {'shortcuts_cifar.py': {'model.name': 'cifar_resnet20', 'model.shortcut': 'A'}}
TRACED_POINT = {'degradation.py': {'model.name': 'cifar_plain56'},
                'depth_cifar.py': {'model.name': 'cifar_resnet110'},
                'plain_vs_residual_imagenet.py': {'model.name': 'plain34'},
                'shortcuts_imagenet.py': {'model.shortcut': 'C'}}


def cheap(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config on fake data of the same channels, at most 32x32, batch 8, 2 steps."""
  c = ml_collections.ConfigDict(config.to_dict())
  size, channels = min(c.data.image_size, 32), len(c.data.mean)
  c.data.update(source='fake', fake_image_shape=(size, size, channels), image_size=size,
                fake_num_examples=16, holdout=0, augment='none', eval_resize=0,
                device_resident=False, num_workers=0)
  c.batch_size = c.eval_batch_size = 8
  c.num_steps, c.num_epochs = 2, 0
  c.log_every_steps = 1
  return c


def depth(model_name: str) -> int:
  return int(re.search(r'(\d+)$', model_name).group(1))


def sweep_points(spec: str) -> list[tuple[dict, ml_collections.ConfigDict]]:
  base, grid, _ = load_sweep(f'{ABLATIONS}/{spec}')
  return [(point, apply_overrides(base, point)) for point in grid]


def find_point(spec: str, wanted: dict) -> ml_collections.ConfigDict:
  """The config of the point of `spec` whose overrides include `wanted`."""
  [config] = [c for p, c in sweep_points(spec) if p.items() >= wanted.items()]
  return cheap(config)


def check_model_matches_point(params: dict, config: ml_collections.ConfigDict) -> None:
  """Layers, residual or plain, and shortcut projections as the point's config asks."""
  blocks = block_names(params)
  assert 2 * len(blocks) + 2 == depth(config.model.name), config.model.name
  stages = {BLOCK.match(k).group(1) for k in blocks}
  projections = sum('shortcut' in params[k] for k in blocks)
  if 'plain' in config.model.name:
    expected = 0
  else:
    expected = {'A': 0, 'B': len(stages) - 1, 'C': len(blocks)}[config.model.shortcut]
  assert projections == expected, (config.model.name, config.model.shortcut)


@pytest.mark.parametrize('name', sorted(p.name for p in ABLATIONS.glob('*.py')))
def test_docstring_gives_the_sweep_command(name):
  doc = (ABLATIONS / name).read_text().split('"""')[1]
  assert f'python -m resnet_jax.sweep --config=configs/ablations/{name}' in doc


@pytest.mark.parametrize('spec', [s for s in SWEEPS if 'imagenet' not in s])
def test_cifar_points_are_their_recipes(spec):
  """Each CIFAR point trains exactly as `configs/<dataset>.py:<model>` (shortcut aside)."""
  dataset = spec.partition(':')[2] or 'cifar10'
  for point, config in sweep_points(spec):
    recipe = load_recipe(f'{dataset}:{config.model.name.removeprefix("cifar_")}')
    recipe.model.shortcut = config.model.shortcut
    assert config.to_dict() == recipe.to_dict(), point


def test_grids_cover_the_paper():
  names = lambda spec: [(c.model.name, c.model.shortcut) for _, c in sweep_points(spec)]
  depths = (20, 32, 44, 56, 110)
  assert sorted(names('degradation.py')) == sorted(
      (f'cifar_{k}{d}', 'A') for k in ('plain', 'resnet') for d in depths)
  assert names('depth_cifar.py') == [(f'cifar_resnet{d}', 'A') for d in (*depths, 1202)]
  assert sorted(names('shortcuts_cifar.py')) == sorted(
      (f'cifar_resnet{d}', s) for d in (20, 56) for s in 'ABC')
  assert names('shortcuts_imagenet.py') == [('resnet34', s) for s in 'ABC']
  assert sorted(names('plain_vs_residual_imagenet.py')) == sorted(
      (f'{k}{d}', 'A') for k in ('plain', 'resnet') for d in (18, 34))


def test_budget_sweep_spends_the_budget_on_depth_or_width():
  from resnet_jax.models.summary import summarize, widest_within
  assert widest_within('cifar_resnet20', 272_474) == 16     # the paper's ResNet-20: 0.27M
  best = load_recipe('fashion_mnist:resnet20,best').to_dict()
  points = sweep_points('budget_fashion_mnist.py')
  assert [depth(c.model.name) for _, c in points] == [20, 32, 44, 56, 110]
  for point, config in points:
    options = dict(num_classes=10, in_channels=1, shortcut='A')
    params = lambda w: summarize(config.model.name, width=w, **options)['params']
    assert params(config.model.width) <= 1_700_000 < params(config.model.width + 1), point
    other = config.to_dict()
    other['model'].update(name=best['model']['name'], width=best['model']['width'])
    assert other == best, point
  trainer, train_input, _ = create_trainer(cheap(points[-1][1]))   # the deepest: its step traces
  check_model_matches_point(trainer.abstract_state.params, points[-1][1])
  _, metrics = jax.eval_shape(trainer.train_step, trainer.abstract_state, next(iter(train_input)))
  assert metrics['loss'].shape == ()
  with pytest.raises(ValueError, match='no argument'):
    load_sweep(f'{ABLATIONS}/budget_fashion_mnist.py:cifar10')


def test_bad_sweep_arguments_are_errors():
  with pytest.raises(ValueError, match='fashion_mnist'):
    load_sweep(f'{ABLATIONS}/degradation.py:imagenet')
  with pytest.raises(ValueError, match='modern'):
    load_sweep(f'{ABLATIONS}/shortcuts_imagenet.py:modern')


@pytest.mark.parametrize('spec', CHEAP_SWEEPS)
def test_every_point_builds_its_model(spec):
  for point, full in sweep_points(spec):
    config = cheap(full)
    trainer, _, _ = create_trainer(config)
    check_model_matches_point(trainer.abstract_state.params, config)
    peak = peak_learning_rate(config)
    warms_up = spec in ('degradation.py', 'depth_cifar.py') and depth(config.model.name) >= 110
    # The paper's CIFAR-10 ResNet-110/1202: lr 0.01 (0.1 x the peak) for the first 400 iterations.
    np.testing.assert_allclose(trainer.schedule(0), 0.1 * peak if warms_up else peak, rtol=1e-6)


def test_every_sweep_file_is_checked_and_one_point_of_each_trains_or_traces():
  """A sweep file added to configs/ablations/ must join SWEEPS (the budget sweep has its own
  test), and one of its points TRAINED_POINT or TRACED_POINT."""
  on_disk = {p.name for p in ABLATIONS.glob('*.py') if 'def get_sweep' in p.read_text()}
  assert on_disk - {'budget_fashion_mnist.py'} == {s.partition(':')[0] for s in SWEEPS}
  assert set(TRAINED_POINT) | set(TRACED_POINT) == {s.partition(':')[0] for s in CHEAP_SWEEPS}


@pytest.mark.parametrize('spec', sorted(TRACED_POINT))
def test_train_step_traces(spec):
  trainer, train_input, _ = create_trainer(find_point(spec, TRACED_POINT[spec]))
  state = trainer.abstract_state
  new_state, metrics = jax.eval_shape(trainer.train_step, state, next(iter(train_input)))
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), new_state.params) == jax.tree.map(
      lambda a: (a.shape, a.dtype), state.params)
  assert metrics['loss'].shape == ()


@pytest.mark.usefixtures('rbg_keys')
@pytest.mark.parametrize('spec', sorted(TRAINED_POINT))
def test_point_trains_two_steps(spec, tmp_path):
  config = find_point(spec, TRAINED_POINT[spec])
  summary = train_and_evaluate(config, tmp_path)
  assert summary['steps'] == 2 and not summary['preempted']
  assert 0.0 <= summary['final']['eval/top1'] <= 1.0
  info = json.loads((tmp_path / 'run_info.json').read_text())
  assert info['model'] == config.model.name
  losses = [r['train/loss'] for r in read_metrics(tmp_path) if 'train/loss' in r]
  assert len(losses) == 2 and np.all(np.isfinite(losses))
  assert (tmp_path / 'checkpoints').is_dir()
