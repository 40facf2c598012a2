"""The sweep runner: a 2-point grid of tiny models end to end, resuming, report, commands."""

import json
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

from resnet_jax import sweep
from tests.fast_keys import rbg_keys  # noqa: F401  (a fixture)

SWEEP_CONFIG = '''"""A 2-point sweep: python -m resnet_jax.sweep --config=THIS --workdir=DIR."""
from resnet_jax.config_base import base_config

EVAL_PROTOCOLS = ('ten_crop',)


def get_config(arg=None):
  c = base_config()
  c.model.width = 4
  c.data.update(fake_image_shape=(8, 8, 3), image_size=8, fake_num_examples=32)
  c.batch_size = 8
  c.eval_batch_size = 16
  c.num_steps = 2
  c.log_every_steps = 1
  c.schedule.name = 'constant'
  return c


def get_sweep(arg=None):
  return [{'model.name': 'small_resnet'},
          {'model.name': 'small_plain', 'optimizer.lr': float(arg or 0.1)}]
'''
ROOT = Path(__file__).resolve().parents[1]
POINTS = ['name-small_resnet', 'name-small_plain_lr-0.1']
DIVERGING = 'name-small_plain_lr-1e+30'


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
  path = tmp_path / 'tiny_sweep.py'
  path.write_text(SWEEP_CONFIG)
  return path


def summary(point: Path) -> dict:
  return json.loads((point / 'summary.json').read_text())


def files_and_mtimes(directory: Path) -> dict[Path, int]:
  return {p: p.stat().st_mtime_ns for p in directory.rglob('*') if p.is_file()}


@pytest.mark.usefixtures('rbg_keys')
def test_runs_resumes_and_reports(config_file, tmp_path, capsys):
  out = tmp_path / 'sweep'
  # With lr 1e30 the second point's loss turns non-finite: it fails, named, and the sweep goes on.
  assert sweep.main([f'--config={config_file}:1e30', f'--workdir={out}']) == 1
  assert f'{DIVERGING}: failed: loss is' in capsys.readouterr().err
  assert not (out / DIVERGING / 'summary.json').exists()
  first = out / POINTS[0]
  assert summary(first)['steps'] == 2 and not summary(first)['preempted']
  # EVAL_PROTOCOLS: the final checkpoint evaluated with ten_crop, its top-1 a column of the report
  ten_crop = json.loads((first / 'eval_ten_crop_latest_2.json').read_text())
  assert (ten_crop['protocol'], ten_crop['step'], ten_crop['num_examples']) == ('ten_crop', 2, 32)
  assert not list((out / DIVERGING).glob('eval_*.json'))   # a failed point is not evaluated
  table = (out / 'report.md').read_text()
  lines = table.splitlines()
  header = next(line for line in lines if line.startswith('| run |'))
  first_row = next(line for line in lines if line.startswith(f'| {POINTS[0]} |'))
  assert header.endswith('| top-1 ten_crop (%) |')
  assert first_row.endswith(f'| {100 * ten_crop["eval/top1"]:.2f} |')
  assert DIVERGING not in table

  # The rerun, with a sane second point: the finished first point is left alone.
  untouched, one_point_figure = files_and_mtimes(first), (out / 'report.png').read_bytes()
  assert sweep.main([f'--config={config_file}', f'--workdir={out}']) == 0
  printed = capsys.readouterr().out
  assert f'{POINTS[0]}: finished before, not run again' in printed
  assert f'{POINTS[1]}: training' in printed
  assert f'{POINTS[0]}: evaluating' not in printed and f'{POINTS[1]}: evaluating with ten_crop' in (
      printed)
  assert files_and_mtimes(first) == untouched   # its evaluation too
  assert summary(out / POINTS[1])['steps'] == 2 and not summary(out / POINTS[1])['preempted']
  table = (out / 'report.md').read_text()
  assert all(f'| {name} |' in table for name in POINTS)
  assert (out / 'report.png').read_bytes() != one_point_figure   # redrawn with both points

  # A point whose evaluation fails (here: its results and checkpoints gone) is named; the others
  # and the report go on.
  (first / 'eval_ten_crop_latest_2.json').unlink()
  shutil.rmtree(first / 'checkpoints')
  report_time = (out / 'report.md').stat().st_mtime_ns
  assert sweep.main([f'--config={config_file}', f'--workdir={out}']) == 1
  err = capsys.readouterr().err
  assert f'{POINTS[0]}: evaluation failed: ' in err
  assert f'1 point(s) failed: {POINTS[0]} (evaluation)' in err
  assert (out / 'report.md').stat().st_mtime_ns > report_time


@pytest.mark.usefixtures('rbg_keys')
def test_a_rerun_with_another_config_is_refused_naming_the_change(config_file, tmp_path, capsys):
  out = tmp_path / 'sweep'
  assert sweep.main([f'--config={config_file}', f'--workdir={out}']) == 0
  capsys.readouterr()
  assert sweep.main([f'--config={config_file}', f'--workdir={out}', '--set=num_steps=3']) == 1
  assert f'{out / POINTS[0]} was run with another config (num_steps: 2 -> 3)' in (
      capsys.readouterr().err)
  # A point run before a field was added to the schema (its config.json lacks it) is the same
  # config where this version's default is asked for.
  saved_path = out / POINTS[0] / 'config.json'
  saved = json.loads(saved_path.read_text())
  del saved['data']['nvimgcodec_backends']
  saved['eval']['scales'] = [224, 256]   # eval settings: not a change of the training run
  saved_path.write_text(json.dumps(saved))
  assert sweep.main([f'--config={config_file}', f'--workdir={out}']) == 0
  assert f'{POINTS[0]}: finished before, not run again' in capsys.readouterr().out


@pytest.mark.usefixtures('rbg_keys')
def test_a_sweep_whose_points_all_fail_names_them(tmp_path, capsys):
  path = tmp_path / 'all_fail.py'
  path.write_text(SWEEP_CONFIG.replace(
      "return [{'model.name': 'small_resnet'},\n          {'model.name': 'small_plain', "
      "'optimizer.lr': float(arg or 0.1)}]",
      "return [{'model.name': 'small_plain', 'optimizer.lr': 1e30}]"))
  assert sweep.main([f'--config={path}', f'--workdir={tmp_path / "sweep"}']) == 1
  assert f'1 point(s) failed: {DIVERGING}' in capsys.readouterr().err


def sigterm_after_first_log(metrics: Path) -> threading.Thread:
  """SIGTERM to this process once `metrics` has a training line (the loop's handler is set)."""
  def wait_and_signal():
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
      if metrics.is_file() and 'train/loss' in metrics.read_text():
        os.kill(os.getpid(), signal.SIGTERM)
        return
      time.sleep(0.05)
  thread = threading.Thread(target=wait_and_signal, daemon=True)
  thread.start()
  return thread


@pytest.mark.usefixtures('rbg_keys')
def test_preemption_stops_the_sweep(config_file, tmp_path, capsys):
  out = tmp_path / 'sweep'
  thread = sigterm_after_first_log(out / POINTS[0] / 'metrics.jsonl')
  assert sweep.main([f'--config={config_file}', f'--workdir={out}',
                     '--set=num_steps=1000000', '--set=data.fake_num_examples=100000']) == 0
  thread.join()
  assert f'{POINTS[0]}: preempted' in capsys.readouterr().out
  assert summary(out / POINTS[0])['preempted']
  assert (out / POINTS[0] / 'checkpoints').is_dir()
  assert not (out / POINTS[1]).exists() and not (out / 'report.md').exists()


def parse_main_config(command: list[str]):
  """The config `python -m resnet_jax.main` would build from a command's arguments."""
  argv = [sys.argv[0], *(a for a in command if a.startswith('--config'))]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'test', flag_values=fv, lock_config=True,
                                  sys_argv=argv)
  fv(argv)
  return fv.config


@pytest.mark.usefixtures('rbg_keys')
def test_seeds_run_each_point_again_and_the_report_sums_them_up(config_file, tmp_path, capsys):
  out = tmp_path / 'sweep'
  assert sweep.main([f'--config={config_file}', f'--workdir={out}', '--set=seed=5']) == 0
  capsys.readouterr()
  assert sweep.main([f'--config={config_file}', f'--workdir={out}', '--seeds=2',
                     '--set=seed=5']) == 0   # the first seed: the one-seed sweep's runs
  said = capsys.readouterr().out
  assert [f'{p}: finished before, not run again' in said for p in POINTS] == [True, True]
  names = [n for p in POINTS for n in (p, f'{p}_seed-6')]
  assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(names)
  assert [json.loads((out / n / 'config.json').read_text())['seed'] for n in names] == [5, 6] * 2
  section = (out / 'report.md').read_text().split('## Over seeds')[1]
  assert [l.split(' | ')[:2] for l in section.splitlines() if l.startswith('| name-')] == [
      [f'| {p}', '2'] for p in POINTS]


def test_seeds_are_checked(config_file, tmp_path, capsys):
  assert sweep.main([f'--config={config_file}', f'--workdir={tmp_path}', '--seeds=0']) == 1
  assert 'runs each point at least once' in capsys.readouterr().err
  seeded = tmp_path / 'seeded.py'
  seeded.write_text(config_file.read_text().replace("{'model.name': 'small_resnet'}",
                                                    "{'model.name': 'small_resnet', 'seed': 3}"))
  assert sweep.main([f'--config={seeded}', f'--workdir={tmp_path}', '--seeds=2']) == 1
  assert 'varies the seed itself' in capsys.readouterr().err


def test_an_override_carries_to_the_fields_computed_from_it():
  from resnet_jax.recipes import load_recipe
  base = load_recipe('fashion_mnist:resnet20,best')   # evaluates every 10 epochs
  config = sweep.apply_overrides(base, {'batch_size': 512})
  assert (config.eval_every_steps, base.eval_every_steps) == (10 * 117, 10 * 234)


def test_print_commands_one_per_point(config_file, tmp_path, capsys):
  out = tmp_path / 'sweep'
  assert sweep.main([f'--config={config_file}', f'--workdir={out}', '--print-commands',
                     '--set=num_steps=7', '--set=data.fake_image_shape=[8,8,1]',
                     '--set=eval.checkpoint=best']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 4   # training, then evaluating with EVAL_PROTOCOLS, each point
  base, grid, _ = sweep.load_sweep(str(config_file))
  for line, name, point in zip(lines, POINTS * 2, grid * 2):
    command = shlex.split(line)
    assert command[:3] == ['python', '-m', 'resnet_jax.main']
    assert f'--workdir={out / name}' in command
    evaluating = line in lines[2:]
    assert ('--mode=eval' in command) == evaluating
    config = parse_main_config(command)
    expected = sweep.apply_overrides(
        base, {**point, 'num_steps': 7, 'data.fake_image_shape': (8, 8, 1),
               'eval.checkpoint': 'best',   # the eval commands evaluate the latest, as in-process
               **({'eval.protocol': 'ten_crop', 'eval.checkpoint': 'latest'} if evaluating
                  else {})})
    assert config.to_dict() == expected.to_dict()
  assert not out.exists()


@pytest.mark.parametrize('spec', ['degradation.py', 'depth_cifar.py:fashion_mnist',
                                  'shortcuts_cifar.py', 'plain_vs_residual_imagenet.py'])
def test_ablation_commands_build_the_points_configs(spec, tmp_path, capsys):
  spec = f'{ROOT}/configs/ablations/{spec}'
  sweep.run_sweep(spec, tmp_path, print_commands=True)
  base, grid, protocols = sweep.load_sweep(spec)
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == len(grid) * (1 + len(protocols))
  for line, point in zip(lines, grid):
    expected = sweep.apply_overrides(base, point).to_dict()
    assert parse_main_config(shlex.split(line)).to_dict() == expected, line


def test_bad_override_is_an_error_naming_it(config_file, tmp_path, capsys):
  config_file.write_text(SWEEP_CONFIG.replace("'optimizer.lr'", "'optimizer.lrr'"))
  assert sweep.main([f'--config={config_file}', f'--workdir={tmp_path}']) == 1
  assert 'optimizer.lrr' in capsys.readouterr().err
  assert not (tmp_path / POINTS[0]).exists()   # found before the first point trains
  assert sweep.main([f'--config={config_file}', f'--workdir={tmp_path}', '--set=batch_size=x']) == 1
  assert 'batch_size' in capsys.readouterr().err
  config_file.write_text(SWEEP_CONFIG)
  assert sweep.main([f'--config={config_file}', f'--workdir={tmp_path}',
                     '--set=model.name=small_plain']) == 1   # would make both points one run
  assert '--set model.name: the grid of' in capsys.readouterr().err
  config_file.write_text(SWEEP_CONFIG.replace('c.num_steps = 2', 'c.num_stepz = 2'))
  assert sweep.main([f'--config={config_file}', f'--workdir={tmp_path}']) == 1
  err = capsys.readouterr().err
  assert f'error: {config_file}: unknown config field' in err and 'num_stepz' in err
  config_file.write_text(SWEEP_CONFIG.replace('c.num_steps = 2', 'c.num_steps = None.real'))
  with pytest.raises(AttributeError):   # a bug in the file, not a missing field: its traceback
    sweep.main([f'--config={config_file}', f'--workdir={tmp_path}'])
