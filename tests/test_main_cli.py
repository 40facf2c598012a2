"""The command line: configs, variants, overrides and the errors a user can make."""

import subprocess
import sys
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (ROOT / 'configs').glob('*.py'))


def run_main(*args, cwd=ROOT, timeout=120):
  return subprocess.run([sys.executable, '-m', 'resnet_jax.main', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=timeout)


def load_config(spec: str, *overrides: str):
  """Parses --config the way main does, without running anything."""
  argv = [sys.argv[0], f'--config={ROOT / "configs" / spec}', *overrides]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'test', flag_values=fv, lock_config=True,
                                  sys_argv=argv)   # overrides are read from sys_argv
  fv(argv)
  return fv.config


@pytest.mark.parametrize('name', CONFIGS)
def test_every_config_loads_with_a_docstring(name):
  text = (ROOT / 'configs' / name).read_text()
  assert text.startswith('"""') and 'python -m resnet_jax' in text.split('"""')[1], name
  config = load_config(name)
  assert config.model.name
  assert (config.num_steps > 0) != (config.num_epochs > 0), name   # the run's length, once
  # Batches that split over the 8 GPUs or TPU cores of a usual host.
  assert config.batch_size % 8 == 0 and config.eval_batch_size % 8 == 0, name


def test_variants_and_overrides_reach_the_config():
  c = load_config('imagenet.py:resnet34', '--config.optimizer.lr=0.2', '--config.batch_size=512')
  assert c.model.name == 'resnet34'
  assert c.optimizer.lr == 0.2 and c.batch_size == 512
  assert load_config('imagenet.py:resnet50,modern').schedule.name == 'cosine'
  c = load_config('cifar10.py:plain56,holdout')
  assert (c.model.name, c.data.holdout) == ('cifar_plain56', 5000)
  assert load_config('cifar10.py:resnet110').schedule.warmup == 400
  assert load_config('fashion_mnist.py:resnet56').model.name == 'cifar_resnet56'
  fast = load_config('fashion_mnist.py:resnet20,fast')
  assert (fast.model.name, fast.batch_size, fast.dtype, fast.schedule.name) == (
      'cifar_resnet20', 512, 'bfloat16', 'linear')
  assert fast.xla_deterministic and not load_config('fashion_mnist.py').xla_deterministic
  best = load_config('fashion_mnist.py:resnet20,best', '--config.num_epochs=3')
  assert (best.model.width, best.batch_size, best.optimizer.ema_bn_batches, best.num_epochs) == (
      40, 256, 100, 3)
  with pytest.raises(Exception, match='choose one of the flags'):
    load_config('fashion_mnist.py:resnet20,fast,best')


def test_the_best_recipe_evaluates_every_10_epochs_at_any_batch_size():
  assert load_config('fashion_mnist.py:resnet20,best').eval_every_steps == 10 * 234
  big = load_config('fashion_mnist.py:resnet20,best', '--config.batch_size=512')
  assert (big.eval_every_steps, big.checkpoint_every_steps) == (10 * 117, 10 * 117)
  set_one = load_config('fashion_mnist.py:resnet20,best', '--config.eval_every_steps=4680')
  assert (set_one.eval_every_steps, set_one.checkpoint_every_steps) == (4680, 2340)


def test_the_fast_and_best_recipes_keep_their_epochs_on_mnist():
  assert load_config('mnist.py').num_epochs == 15
  for flag in ('fast', 'best'):
    assert (load_config(f'mnist.py:resnet20,{flag}').num_epochs
            == load_config(f'fashion_mnist.py:resnet20,{flag}').num_epochs > 15)


def test_unknown_variant_lists_valid_ones():
  with pytest.raises(Exception, match=r"unknown config variant 'resnet51'.*'resnet18'.*'plain152'"):
    load_config('imagenet.py:resnet51')


def test_bad_key_fails_with_its_name(tmp_path):
  r = run_main('--config=configs/fake.py', f'--workdir={tmp_path}', '--config.optimizer.lrr=0.1')
  assert r.returncode == 1 and 'Traceback' not in r.stderr
  assert "error: unknown config field 'lrr'; Did you mean \"lr\"" in r.stderr
  assert not (tmp_path / 'checkpoints').exists()


def test_a_misspelt_variant_fails_naming_the_valid_ones(tmp_path):
  r = run_main('--config=configs/image_folder.py:smal', f'--workdir={tmp_path / "run"}')
  assert r.returncode != 0 and 'image_folder.py:smal: the variant is small or a model name' in (
      r.stderr)
  assert not (tmp_path / 'run').exists()


def test_a_misspelt_field_in_a_config_file_fails_with_its_name(tmp_path):
  config = tmp_path / 'typo.py'
  config.write_text('from resnet_jax.config_base import base_config\n\n'
                    'def get_config():\n'
                    '  c = base_config()\n'
                    '  c.optimizer.weight_decy = 5e-4\n'
                    '  return c\n')
  r = run_main(f'--config={config}', f'--workdir={tmp_path / "run"}', cwd=ROOT)
  assert r.returncode == 1 and 'Traceback' not in r.stderr
  assert 'error: unknown config field' in r.stderr and 'weight_decy' in r.stderr
  assert not (tmp_path / 'run').exists()


def test_a_bug_in_a_config_file_keeps_its_traceback(tmp_path):
  config = tmp_path / 'buggy.py'
  config.write_text('import numpy as np\n\ndef get_config():\n  return np.meen\n')
  r = run_main(f'--config={config}', f'--workdir={tmp_path / "run"}', cwd=ROOT)
  assert r.returncode != 0 and 'Traceback' in r.stderr and 'meen' in r.stderr
  assert 'unknown config field' not in r.stderr


def test_bad_value_type_fails_with_its_name(tmp_path):
  r = run_main('--config=configs/fake.py', f'--workdir={tmp_path}', '--config.batch_size=many')
  assert r.returncode != 0
  assert 'batch_size' in r.stderr


def test_missing_data_fails_before_the_workdir_is_made(tmp_path):
  r = run_main('--config=configs/image_folder.py:small', f'--workdir={tmp_path / "run"}',
               f'--config.data.data_dir={tmp_path / "nowhere"}')
  assert r.returncode == 1 and 'nowhere does not exist' in r.stderr
  assert not (tmp_path / 'run').exists()


def test_a_length_in_epochs_and_in_steps_fails_before_the_workdir_is_made(tmp_path):
  """configs/fake.py trains for num_steps: num_epochs on top is refused, not ignored."""
  r = run_main('--config=configs/fake.py', f'--workdir={tmp_path / "run"}', '--config.num_epochs=2')
  assert r.returncode == 1
  assert "num_steps=40 and num_epochs=2.0 both set the run's length" in r.stderr
  assert not (tmp_path / 'run').exists()
  r = run_main('--config=configs/fake.py', f'--workdir={tmp_path / "run"}', '--config.num_steps=0')
  assert r.returncode == 1 and 'one of them must be positive' in r.stderr


def test_missing_workdir_fails_clearly():
  r = run_main('--config=configs/fake.py')
  assert r.returncode != 0
  assert 'workdir' in r.stderr


def test_missing_config_file_fails_clearly(tmp_path):
  r = run_main('--config=configs/nope.py', f'--workdir={tmp_path}')
  assert r.returncode != 0
  assert 'nope.py' in r.stderr
