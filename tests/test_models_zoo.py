"""Model zoo: registry, parameter counts and MACs against the paper and torchvision, summary CLI.

Everything here is shape-only (`jax.eval_shape`): no big network is ever initialised.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from resnet_jax import models
from resnet_jax.models import summary
from resnet_jax.models.blocks import BasicBlock
from resnet_jax.models.summary import count_macs, count_params, trace


def shapes(name, shape=None, **options):
  """Variable shapes of `create_model(name, **options)` on one example."""
  model = models.create_model(name, **options)
  x = jnp.zeros((1, *(shape or models.input_shape(name))), jnp.float32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def flat(tree):
  return {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(tree)}


TORCHVISION_PARAMS = {'resnet18': 11_689_512, 'resnet34': 21_797_672, 'resnet50': 25_557_032,
                      'resnet101': 44_549_160, 'resnet152': 60_192_808}
PAPER_GFLOPS = {'resnet18': 1.8, 'resnet34': 3.6, 'resnet50': 3.8, 'resnet101': 7.6,
                'resnet152': 11.3}   # Table 1: multiply-adds, stride on the first 1x1 ('v1')


@pytest.mark.parametrize('name', list(TORCHVISION_PARAMS))
def test_imagenet_params_equal_torchvision_and_macs_match_paper(name):
  variables, macs = trace(models.create_model(name, variant='v1'), (224, 224, 3), train=False)
  assert count_params(variables) == TORCHVISION_PARAMS[name]   # option B, 1000 classes
  assert macs / 1e9 == pytest.approx(PAPER_GFLOPS[name], rel=0.03)


def test_variant_moves_the_stride_not_the_parameters():
  v1 = models.create_model('resnet50', variant='v1')
  v15 = models.create_model('resnet50', variant='v1.5')
  assert flat(shapes('resnet50', variant='v1')) == flat(shapes('resnet50'))
  # The stride on the 3x3 makes the 3x3 and the second 1x1 work at the higher resolution.
  assert count_macs(v15, (224, 224, 3)) / 1e9 == pytest.approx(4.09, abs=0.01)
  assert count_macs(v1, (224, 224, 3)) < count_macs(v15, (224, 224, 3))


@pytest.mark.parametrize('name,expected', [('cifar_resnet20', 269_722), ('cifar_resnet56', 853_018),
                                           ('cifar_resnet110', 1_727_962)])
def test_cifar_params(name, expected):
  assert count_params(shapes(name)) == expected


def test_cifar_resnet1202_params_about_19_4m():
  assert count_params(shapes('cifar_resnet1202')) == pytest.approx(19.4e6, rel=0.01)


def test_cifar_resnet20_macs_by_hand():
  conv = lambda hw, cout, cin: hw * hw * cout * 9 * cin
  expected = (conv(32, 16, 3) + 6 * conv(32, 16, 16) + conv(16, 32, 16) + 5 * conv(16, 32, 32)
              + conv(8, 64, 32) + 5 * conv(8, 64, 64) + 64 * 10)
  model = models.create_model('cifar_resnet20')
  assert count_macs(model, (32, 32, 3)) == expected == 40_551_040
  assert count_macs(model, (32, 32, 3)) == expected   # a second trace counts again


def test_count_params_ignores_batch_stats():
  variables = shapes('cifar_resnet20')
  assert count_params(variables) == count_params(variables['params'])
  assert count_params(variables['batch_stats']) > 0


def test_option_a_is_parameter_free_and_option_c_projects_every_block():
  def projections(tree):
    return [k for k in flat(tree['params']) if 'shortcut' in k and 'kernel' in k]
  assert projections(shapes('cifar_resnet20')) == []              # family default: A
  assert projections(shapes('resnet18', shortcut='A')) == []
  assert len(projections(shapes('cifar_resnet20', shortcut='B'))) == 2   # the two stage changes
  assert len(projections(shapes('cifar_resnet20', shortcut='C'))) == 9   # every block
  assert len(projections(shapes('resnet18'))) == 3                       # family default: B
  assert len(projections(shapes('resnet18', shortcut='c'))) == 8
  assert len(projections(shapes('resnet50'))) == 4   # stage 1 too: 64 -> 256 channels
  assert len(projections(shapes('resnet50', shortcut='C'))) == 16


@pytest.mark.parametrize('plain,resnet', [('plain18', 'resnet18'), ('plain50', 'resnet50'),
                                          ('cifar_plain20', 'cifar_resnet20'),
                                          ('small_plain', 'small_resnet')])
def test_plain_nets_have_the_same_layers_as_their_option_a_twins(plain, resnet):
  p, r = flat(shapes(plain)['params']), flat(shapes(resnet, shortcut='A')['params'])
  assert p == r
  assert sum('conv' in k and 'kernel' in k for k in p) > 0
  assert flat(shapes(resnet, residual=False)) == flat(shapes(plain))


def test_registry_names_and_input_shapes():
  names = models.model_names()
  for depth in (18, 34, 50, 101, 152):
    assert {f'resnet{depth}', f'plain{depth}'} <= set(names)
  for depth in (20, 32, 44, 56, 110, 1202):
    assert {f'cifar_resnet{depth}', f'cifar_plain{depth}'} <= set(names)
  assert {'small_resnet', 'small_plain'} <= set(names)
  assert models.input_shape('resnet50') == (224, 224, 3)
  assert models.input_shape('cifar_resnet20') == (32, 32, 3)
  assert models.input_shape('small_plain', in_channels=1) == (32, 32, 1)


def test_family_defaults_and_options():
  m = models.create_model('cifar_resnet56')
  assert (m.shortcut, m.num_classes, m.width, m.stage_sizes) == ('A', 10, 16, (9, 9, 9))
  m = models.create_model('resnet50', shortcut='', width=0, bn_group_size=0)
  assert (m.shortcut, m.num_classes, m.width, m.bn_group_size) == ('B', 1000, 64, None)
  assert models.create_model('small_resnet').shortcut == 'B'
  assert models.create_model('plain34', residual=True).residual is False
  assert models.create_model('resnet34', residual=False).residual is False
  assert models.create_model('resnet18', dtype='bfloat16') == models.create_model(
      'resnet18', dtype=jnp.bfloat16)
  assert models.create_model('resnet18', dtype='bfloat16').dtype == jnp.bfloat16
  narrow = shapes('small_resnet', width=8)['params']
  assert narrow['stage3_block1']['conv2']['kernel'].shape == (3, 3, 32, 32)


def test_bad_names_and_options_fail_listing_the_valid_ones():
  with pytest.raises(ValueError, match="resnet19.*'resnet18'.*'small_plain'"):
    models.create_model('resnet19')
  with pytest.raises(ValueError, match="resnet19.*'cifar_resnet20'"):
    models.input_shape('resnet19')
  with pytest.raises(ValueError, match=r"shortcut option 'D'; valid: \['A', 'B', 'C'\]"):
    models.create_model('resnet18', shortcut='D')
  with pytest.raises(ValueError, match=r"variant 'v2'; valid: \['v1', 'v1.5'\]"):
    models.create_model('resnet50', variant='v2')
  with pytest.raises(TypeError, match='num_clases'):
    models.create_model('resnet50', num_clases=10)
  with pytest.raises(ValueError, match='bn_group_size'):
    models.create_model('resnet50', bn_group_size=-1)
  for rate in (1.0, -0.1):
    with pytest.raises(ValueError, match=r'drop_path_rate must be in \[0, 1\)'):
      models.create_model('resnet50', drop_path_rate=rate)
  with pytest.raises(ValueError, match='plain net cifar_plain20 .* has none'):
    models.create_model('cifar_plain20', drop_path_rate=0.1)
  with pytest.raises(ValueError, match='plain net cifar_resnet20 .* has none'):
    models.create_model('cifar_resnet20', residual=False, drop_path_rate=0.1)


@pytest.mark.parametrize('train', [True, False])
def test_stochastic_depth_rates_grow_linearly_with_depth(train):
  """Block l of L drops with probability rate * l / L (Huang et al. 2016), in training only."""
  model = models.create_model('cifar_resnet20', drop_path_rate=0.3)
  seen = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, BasicBlock) and context.method_name == '__call__':
      seen[context.module.name] = (context.module.drop_rate, context.module.deterministic)
    return next_fun(*args, **kwargs)

  x = jnp.zeros((2, 32, 32, 3))
  with nn.intercept_methods(record):
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    jax.eval_shape(lambda v: model.apply(v, x, train=train, mutable=['batch_stats'],
                                         rngs={'drop_path': jax.random.key(1)}), variables)
  names = [f'stage{i}_block{j}' for i in (1, 2, 3) for j in (1, 2, 3)]
  assert list(seen) == names
  assert [r for r, _ in seen.values()] == pytest.approx([0.3 * l / 9 for l in range(1, 10)])
  assert {d for _, d in seen.values()} == {not train}


def test_summary_cli_json_agrees_with_the_counting_functions(capsys):
  summary.main(['--models', 'cifar_resnet20,small_plain', '--json'])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r['name'] for r in rows] == ['cifar_resnet20', 'small_plain']
  for r in rows:
    model = models.create_model(r['name'])
    assert r['params'] == count_params(shapes(r['name']))
    assert r['macs'] == count_macs(model, models.input_shape(r['name']), train=False)
    assert r['gmacs'] == pytest.approx(r['macs'] / 1e9, abs=1e-4)
    assert r['input_shape'] == [32, 32, 3]


def test_summary_cli_table_and_bad_name(capsys):
  summary.main(['--models', 'cifar_resnet20', '--in_channels', '1', '--num_classes', '5'])
  header, row = capsys.readouterr().out.splitlines()
  assert header.split() == ['model', 'input', 'params', 'GMACs']
  expected = count_params(shapes('cifar_resnet20', (32, 32, 1), num_classes=5))
  assert row.split()[:3] == ['cifar_resnet20', '32x32x1', f'{expected:,}']
  with pytest.raises(SystemExit):
    summary.main(['--models', 'resnet19'])
  assert 'unknown model(s) resnet19' in capsys.readouterr().err
