"""torchvision -> resnet_jax conversion, on state dicts built from torchvision's layer shapes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import models
from resnet_jax.convert.torchvision import check_same_structure, convert_state_dict

LAYERS = {'resnet18': ((2, 2, 2, 2), False), 'resnet50': ((3, 4, 6, 3), True)}


def bn(prefix, c):
  return {f'{prefix}.weight': (c,), f'{prefix}.bias': (c,), f'{prefix}.running_mean': (c,),
          f'{prefix}.running_var': (c,), f'{prefix}.num_batches_tracked': ()}


def torchvision_shapes(arch):
  """Names and shapes of torchvision's ResNet state dict, written from its definition."""
  sizes, bottleneck = LAYERS[arch]
  shapes = {'conv1.weight': (64, 3, 7, 7), **bn('bn1', 64)}
  cin, expansion = 64, 4 if bottleneck else 1
  for i, n in enumerate(sizes):
    width = 64 * 2**i
    for j in range(n):
      p = f'layer{i + 1}.{j}'
      if bottleneck:
        convs = [(width, cin, 1), (width, width, 3), (width * 4, width, 1)]
      else:
        convs = [(width, cin, 3), (width, width, 3)]
      for k, (o, c, s) in enumerate(convs, 1):
        shapes[f'{p}.conv{k}.weight'] = (o, c, s, s)
        shapes.update(bn(f'{p}.bn{k}', o))
      if j == 0 and (i > 0 or cin != width * expansion):
        shapes[f'{p}.downsample.0.weight'] = (width * expansion, cin, 1, 1)
        shapes.update(bn(f'{p}.downsample.1', width * expansion))
      cin = width * expansion
  shapes.update({'fc.weight': (1000, cin), 'fc.bias': (1000,)})
  return shapes


@pytest.mark.parametrize('arch', list(LAYERS))
def test_every_tensor_is_mapped_and_none_is_left_over(arch):
  rng = np.random.default_rng(0)
  state_dict = {k: rng.standard_normal(s).astype(np.float32)
                for k, s in torchvision_shapes(arch).items()}
  converted = convert_state_dict(state_dict)
  model = models.create_model(arch, num_classes=1000, shortcut='B', variant='v1.5')
  reference = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, 64, 64, 3)), train=False))
  check_same_structure(converted, dict(reference))
  np.testing.assert_array_equal(converted['params']['stem_conv']['kernel'],
                                state_dict['conv1.weight'].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(converted['params']['head']['kernel'], state_dict['fc.weight'].T)
  np.testing.assert_array_equal(converted['batch_stats']['stage2_block1']['shortcut']['bn']['var'],
                                state_dict['layer2.0.downsample.1.running_var'])


@pytest.mark.parametrize('arch', list(LAYERS))
def test_every_value_lands_transposed_under_its_block_and_role(arch):
  """Each torch tensor (random, so each is unique) is found exactly once among the converted
  arrays, in Flax's layout, under the block it belongs to and with the matching role."""
  rng = np.random.default_rng(1)
  state_dict = {k: rng.standard_normal(s).astype(np.float32)
                for k, s in torchvision_shapes(arch).items()}
  converted = jax.tree_util.tree_flatten_with_path(convert_state_dict(state_dict))[0]
  leaves = {tuple(k.key for k in path): np.asarray(leaf) for path, leaf in converted}
  layout = {4: (2, 3, 1, 0), 2: (1, 0), 1: (0,)}   # OIHW -> HWIO; [out, in] -> [in, out]
  found = []
  for key, value in state_dict.items():
    if key.endswith('num_batches_tracked'):
      continue
    expected = value.transpose(layout[value.ndim])
    [path] = [p for p, leaf in leaves.items()
              if leaf.shape == expected.shape and np.array_equal(leaf, expected)]
    role = key.rsplit('.', 1)[1]
    assert path[-1] == {'weight': 'kernel' if value.ndim > 1 else 'scale', 'bias': 'bias',
                        'running_mean': 'mean', 'running_var': 'var'}[role], (key, path)
    assert path[0] == ('batch_stats' if role.startswith('running') else 'params'), (key, path)
    block = re.fullmatch(r'layer(\d)\.(\d+)\.(.+)\.\w+', key)
    if block:   # e.g. layer2.0.bn3.weight -> stage2_block1/bn3; downsample.1 -> shortcut/bn
      module = (f'stage{block[1]}_block{int(block[2]) + 1}',
                *{'downsample.0': ('shortcut', 'conv'),
                  'downsample.1': ('shortcut', 'bn')}.get(block[3], (block[3],)))
    else:
      module = {'conv1': ('stem_conv',), 'bn1': ('stem_bn',), 'fc': ('head',)}[key.split('.')[0]]
    assert path[1:-1] == module, (key, path)
    found.append(path)
  assert sorted(found) == sorted(leaves)   # every converted array comes from one tensor


def test_a_missing_tensor_is_named():
  state_dict = {k: np.zeros(s, np.float32) for k, s in torchvision_shapes('resnet18').items()}
  del state_dict['layer3.1.conv2.weight']
  model = models.create_model('resnet18', num_classes=1000)
  reference = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                                jnp.zeros((1, 64, 64, 3)), train=False))
  with pytest.raises(KeyError, match='stage3_block2'):
    check_same_structure(convert_state_dict(state_dict), dict(reference))


def test_an_unexpected_tensor_is_named():
  with pytest.raises(KeyError, match='avgpool.weight'):
    convert_state_dict({'avgpool.weight': np.zeros((3,), np.float32)})
