"""torchvision ResNet weights -> a resnet_jax checkpoint.

    python -m resnet_jax.convert.torchvision --checkpoint resnet50.pth --arch resnet50 --out DIR
    python -m resnet_jax.convert.torchvision --arch resnet50 --random --verify --out DIR

Maps a torchvision ResNet-18..152 state dict (v1.5 layout) onto resnet_jax's params and batch
statistics and writes DIR as a workdir whose checkpoint `--mode=eval` and `predict` load with
`--config=configs/imagenet.py:ARCH,modern` (v1.5, option B). `--random` uses torchvision's
random initialisation instead of a file; `--verify` compares the logits of both models in eval
mode, float32, on the same random images, and prints the relative error. torch is imported by
this command only, never by the package.
"""

import re
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

_CHECKPOINT = flags.DEFINE_string('checkpoint', None, 'torchvision state dict (.pth).')
_ARCH = flags.DEFINE_enum('arch', 'resnet50', ['resnet18', 'resnet34', 'resnet50', 'resnet101',
                                               'resnet152'], 'torchvision architecture.')
_OUT = flags.DEFINE_string('out', None, 'Output workdir.')
_RANDOM = flags.DEFINE_bool('random', False, "Use torchvision's random initialisation.")
_VERIFY = flags.DEFINE_bool('verify', False, 'Compare logits with torchvision (needs torch).')
flags.mark_flags_as_required(['out'])

_BLOCK = re.compile(r'layer(\d+)\.(\d+)\.(.+)')
_BN = {'weight': ('params', 'scale'), 'bias': ('params', 'bias'),
       'running_mean': ('batch_stats', 'mean'), 'running_var': ('batch_stats', 'var')}


def torch_to_flax_name(key: str) -> tuple[str, tuple[str, ...]] | None:
  """'layer2.0.downsample.1.running_mean' -> ('batch_stats', ('stage2_block1', 'shortcut',
  'bn', 'mean')); None for keys that carry no weights (num_batches_tracked)."""
  *path, leaf = key.split('.')
  if leaf == 'num_batches_tracked':
    return None
  m = _BLOCK.fullmatch('.'.join(path)) if path and path[0].startswith('layer') else None
  if m:
    stage, block, rest = m.groups()
    prefix = (f'stage{stage}_block{int(block) + 1}',)
    rest = {'downsample.0': 'shortcut.conv', 'downsample.1': 'shortcut.bn'}.get(rest, rest)
    module = prefix + tuple(rest.split('.'))
  else:
    module = ({'conv1': ('stem_conv',), 'bn1': ('stem_bn',), 'fc': ('head',)}
              .get('.'.join(path)))
    if module is None:
      raise KeyError(f'unexpected tensor {key!r} in a torchvision ResNet state dict')
  if module[-1].startswith('bn') or module[-1].endswith('bn'):
    collection, name = _BN[leaf]
    return collection, module + (name,)
  return 'params', module + ({'weight': 'kernel', 'bias': 'bias'}[leaf],)


def to_flax_layout(key: str, value: np.ndarray) -> np.ndarray:
  """Conv OIHW -> HWIO; Linear (out, in) -> (in, out); vectors as they are."""
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2:
    return value.T
  return value


def convert_state_dict(state_dict: dict[str, np.ndarray]) -> dict[str, dict]:
  """{'params': ..., 'batch_stats': ...} nested dicts from a torchvision state dict."""
  out: dict[str, dict] = {'params': {}, 'batch_stats': {}}
  for key, value in state_dict.items():
    target = torch_to_flax_name(key)
    if target is None:
      continue
    collection, path = target
    node = out[collection]
    for p in path[:-1]:
      node = node.setdefault(p, {})
    if path[-1] in node:
      raise KeyError(f'{key!r} maps onto {"/".join(path)}, which is already set')
    node[path[-1]] = np.asarray(to_flax_layout(key, np.asarray(value, np.float32)))
  return out


def check_same_structure(converted: dict, reference: dict) -> None:
  """Every tensor mapped, none left over, shapes equal; else a KeyError listing the problem."""
  import jax
  got = {jax.tree_util.keystr(k): v.shape for k, v in
         jax.tree_util.tree_flatten_with_path(converted)[0]}
  want = {jax.tree_util.keystr(k): v.shape for k, v in
          jax.tree_util.tree_flatten_with_path(reference)[0]}
  missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
  bad = sorted(k for k in want.keys() & got.keys() if tuple(want[k]) != tuple(got[k]))
  if missing or extra or bad:
    raise KeyError(f'state dict does not fit the model: missing {missing[:5]}, '
                   f'unexpected {extra[:5]}, wrong shapes {bad[:5]}')


def imagenet_config(arch: str):
  from resnet_jax.recipes import imagenet_recipe
  return imagenet_recipe(f'{arch},modern')


def write_checkpoint(variables: dict, arch: str, out: Path) -> None:
  """A workdir whose step-0 checkpoint holds `variables`, for --mode=eval and predict."""
  import jax
  from resnet_jax import parallel
  from resnet_jax.checkpoint import Checkpointer, write_json
  from resnet_jax.train.trainer import Trainer

  config = imagenet_config(arch)
  config.dtype = 'float32'
  trainer = Trainer(config, parallel.create_mesh(), num_classes=1000,
                    image_shape=(224, 224, 3), steps_per_epoch=None)
  state = trainer.init_state()
  check_same_structure(variables, {'params': state.params, 'batch_stats': state.batch_stats})
  state = state.replace(**jax.device_put(variables, parallel.replicated(trainer.mesh)))
  out.mkdir(parents=True, exist_ok=True)
  write_json(out / 'config.json', config.to_dict())
  ckpt = Checkpointer(out)
  ckpt.save(0, state, None, config)
  ckpt.wait()
  ckpt.close()


def verify(torch_model, variables: dict, arch: str, n: int = 8) -> float:
  """Max over images of ||logits_jax - logits_torch|| / ||logits_torch||, float32, eval mode."""
  import jax
  import torch
  from resnet_jax import models
  x = np.random.default_rng(0).standard_normal((n, 3, 224, 224)).astype(np.float32)
  with torch.no_grad():
    ref = torch_model.eval()(torch.from_numpy(x)).numpy()
  model = models.create_model(arch, num_classes=1000, shortcut='B', variant='v1.5')
  with jax.default_matmul_precision('float32'):   # no TF32 on GPUs: compare true float32
    got = np.asarray(model.apply(variables, x.transpose(0, 2, 3, 1), train=False))
  err = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
  return float(err.max())


def main(argv):
  del argv
  import torch
  import torchvision
  torch_model = getattr(torchvision.models, _ARCH.value)()
  if not _RANDOM.value:
    if not _CHECKPOINT.value:
      raise app.UsageError('give --checkpoint FILE.pth, or --random')
    torch_model.load_state_dict(torch.load(_CHECKPOINT.value, map_location='cpu'))
  else:
    with torch.no_grad():   # random BN statistics too, so that the comparison exercises them
      for m in torch_model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
          m.running_mean.uniform_(-0.5, 0.5)
          m.running_var.uniform_(0.5, 2.0)
          m.weight.uniform_(0.5, 1.5)
          m.bias.uniform_(-0.5, 0.5)
  state_dict = {k: v.detach().cpu().numpy() for k, v in torch_model.state_dict().items()}
  variables = convert_state_dict(state_dict)
  write_checkpoint(variables, _ARCH.value, Path(_OUT.value))
  print(f'wrote {_OUT.value} ({_ARCH.value}, {len(state_dict)} tensors)')
  if _VERIFY.value:
    err = verify(torch_model, variables, _ARCH.value)
    print(f'verify {_ARCH.value}: max relative logit error vs torchvision (float32, eval) '
          f'{err:.2e} (torch {torch.__version__}, torchvision {torchvision.__version__})')
    if err > 1e-4:
      sys.exit(1)


if __name__ == '__main__':
  app.run(main)
