"""Checkpoints: exact resume, restore onto another mesh, kill -9, SIGTERM, bad checkpoints."""

import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from resnet_jax import parallel
from resnet_jax.checkpoint import Checkpointer, CheckpointMismatchError, check_compatible
from resnet_jax.train import loop
from resnet_jax.train.loop import non_finite_loss_message, train_and_evaluate
from resnet_jax.train.trainer import Trainer
from resnet_jax.train.state import TrainState
from resnet_jax.writers import read_metrics
from tests.helpers import fake_config, write_idx_dataset

ROOT = Path(__file__).resolve().parents[1]


def idx_config(data_dir, device_resident, **overrides):
  c = fake_config(**overrides)
  c.data.update(source='idx', name='fashion_mnist', data_dir=str(data_dir), image_size=28,
                augment='cifar', pad=2, device_resident=device_resident,
                mean=(0.3,), std=(0.3,))
  return c


def final_params(workdir, config):
  trainer = Trainer(config, parallel.create_mesh(), num_classes=10, image_shape=(28, 28, 1),
                    steps_per_epoch=1)
  ckpt = Checkpointer(workdir)
  state, data_state = ckpt.restore(trainer.init_state(), config)
  ckpt.close()
  return jax.device_get(state), data_state


def per_step_losses(workdir):
  """The last logged loss of every step (a resumed run logs the steps after the checkpoint)."""
  return {m['step']: m['train/loss'] for m in read_metrics(workdir) if 'train/loss' in m}


@pytest.mark.parametrize('device_resident', [False, True])
def test_exact_resume(tmp_path, device_resident, devices, caplog):
  data_dir = write_idx_dataset(tmp_path / 'data', num_train=96, num_test=32)
  n = 6
  common = dict(batch_size=16, log_every_steps=1, checkpoint_every_steps=n, eval_every_steps=100)
  straight = idx_config(data_dir, device_resident, num_steps=2 * n, **common)
  train_and_evaluate(straight, tmp_path / 'straight')

  first_half = idx_config(data_dir, device_resident, num_steps=n, **common)
  train_and_evaluate(first_half, tmp_path / 'resumed')
  with caplog.at_level(logging.INFO, logger='absl'):
    train_and_evaluate(straight, tmp_path / 'resumed')
  assert f'training from step {n} of {2 * n}' in caplog.text   # resumed, not started again

  a, _ = final_params(tmp_path / 'straight', straight)
  b, _ = final_params(tmp_path / 'resumed', straight)
  assert int(a.step) == int(b.step) == 2 * n
  for x, y in zip(jax.tree.leaves((a.params, a.batch_stats, a.opt_state)),
                  jax.tree.leaves((b.params, b.batch_stats, b.opt_state))):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
  la, lb = per_step_losses(tmp_path / 'straight'), per_step_losses(tmp_path / 'resumed')
  assert sorted(la) == sorted(lb) == list(range(1, 2 * n + 1))
  np.testing.assert_allclose([la[s] for s in la], [lb[s] for s in la], rtol=1e-6)


def test_a_resume_inside_the_ema_statistics_window_recomputes_them_as_without(tmp_path, devices,
                                                                            monkeypatch, caplog):
  """A checkpoint taken while the batches for the EMA weights' BN statistics are being gathered
  keeps them: the resumed run evaluates and saves the statistics of the uninterrupted one."""
  config = fake_config(num_steps=8, eval_every_steps=8, checkpoint_every_steps=100)
  config.optimizer.update(ema_decay=0.9, ema_bn_batches=4)
  straight = train_and_evaluate(config, tmp_path / 'straight')

  class PreemptedAtStep6:   # as a SIGTERM at step 6: inside the window of steps 5-8
    reached = staticmethod(lambda step: step == 6)
    close = staticmethod(lambda: None)

  monkeypatch.setattr(loop, 'PreemptionWatcher', PreemptedAtStep6)
  assert train_and_evaluate(config, tmp_path / 'resumed')['preempted']
  monkeypatch.undo()
  with caplog.at_level(logging.INFO, logger='absl'):
    resumed = train_and_evaluate(config, tmp_path / 'resumed')
  assert 'training from step 6 of 8' in caplog.text   # resumed, not started again
  assert resumed['final'] == pytest.approx(straight['final'], rel=1e-5)
  trainer = Trainer(config, parallel.create_mesh(), num_classes=10, image_shape=(16, 16, 3),
                    steps_per_epoch=1)
  stats = []
  for run in ('straight', 'resumed'):
    ckpt = Checkpointer(tmp_path / run)
    stats.append(jax.device_get(ckpt.restore(trainer.abstract_state, config)[0].ema_batch_stats))
    ckpt.close()
  for x, y in zip(*map(jax.tree.leaves, stats), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def test_checkpoint_restores_onto_another_mesh(tmp_path, devices):
  config = fake_config(num_steps=4)
  train_and_evaluate(config, tmp_path)   # 8 devices
  state8, _ = final_params_for(tmp_path, config, num_devices=8)
  state1, _ = final_params_for(tmp_path, config, num_devices=1)
  assert int(state8.step) == int(state1.step) == 4
  initial = Trainer(config, parallel.create_mesh(1), num_classes=10, image_shape=(16, 16, 3),
                    steps_per_epoch=1).init_state()
  assert not np.allclose(jax.tree.leaves(state1.params)[0], jax.tree.leaves(initial.params)[0])
  leaf = jax.tree.leaves(state1.params)[0]
  for x, y in zip(jax.tree.leaves(state8.params), jax.tree.leaves(state1.params)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert len(leaf.sharding.device_set) == 1


def final_params_for(workdir, config, num_devices):
  trainer = Trainer(config, parallel.create_mesh(num_devices), num_classes=10,
                    image_shape=tuple(config.data.fake_image_shape), steps_per_epoch=1)
  ckpt = Checkpointer(workdir)
  try:
    return ckpt.restore(trainer.init_state(), config)
  finally:
    ckpt.close()


def test_restoring_some_fields_gives_them_as_the_full_restore_and_checks_the_whole_state(
    tmp_path, devices):
  """The eval weights alone (what a teacher or predict needs), equal to the full restore's."""
  config = fake_config(num_steps=3)
  config.optimizer.ema_decay = 0.5
  train_and_evaluate(config, tmp_path)
  full, _ = final_params_for(tmp_path, config, num_devices=8)
  trainer = Trainer(config, parallel.create_mesh(1), num_classes=10,
                    image_shape=tuple(config.data.fake_image_shape), steps_per_epoch=None)
  template = trainer.abstract_state
  ckpt = Checkpointer(tmp_path)
  try:
    some = ckpt.restore_fields(template, ['ema_params', 'ema_batch_stats'], config, 3)
    assert set(some) == {'ema_params', 'ema_batch_stats'}
    for name in some:
      for x, y in zip(jax.tree.leaves(getattr(full, name)), jax.tree.leaves(some[name]),
                      strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(np.asarray(jax.tree.leaves(full.params)[0]),
                              np.asarray(jax.tree.leaves(some['ema_params'])[0]))
    # The whole state is checked, as by a full restore: here the config has no EMA.
    no_ema = fake_config(num_steps=3)
    live_only = Trainer(no_ema, parallel.create_mesh(1), num_classes=10,
                        image_shape=tuple(config.data.fake_image_shape),
                        steps_per_epoch=None).abstract_state
    with pytest.raises(CheckpointMismatchError, match='ema_batch_stats/.*only in the checkpoint'):
      ckpt.restore_fields(live_only, ['params', 'batch_stats'], no_ema, 3)
  finally:
    ckpt.close()


@pytest.mark.parametrize('metric, values, best', [('eval/top1', (0.9, 0.5, 0.4), 1),
                                                   ('eval/loss', (0.9, 0.5, 0.7), 2)])
def test_the_best_checkpoint_is_found_and_kept_across_a_resume(tmp_path, metric, values, best):
  state = TrainState(step=np.int32(0), params={'w': np.ones(3, np.float32)}, batch_stats={},
                     opt_state=(), rng=np.zeros(2, np.uint32))
  config = fake_config()
  ckpt = Checkpointer(tmp_path, keep=1, keep_best=1, best_metric=metric, async_save=False)
  for step, value in enumerate(values, 1):
    ckpt.save(step, state, None, config, {metric: value})
  ckpt.save(4, state, None, config)   # a periodic checkpoint, without an eval
  assert ckpt.best_step() == best and ckpt.all_steps() == [best, 4]
  ckpt.close()
  resumed = Checkpointer(tmp_path, keep=1, keep_best=1, best_metric=metric, async_save=False)
  resumed.save(5, state, None, config, {metric: 0.8})
  assert resumed.best_step() == best and resumed.all_steps() == [best, 5]
  resumed.close()


def test_on_tied_evals_the_summary_the_report_and_the_best_checkpoint_name_the_later(
    tmp_path, devices):
  """A net that does not change (learning rate 0, BN statistics frozen) evaluates the same at
  steps 2 and 4: best is step 4 in the summary, in the report and as the 'best' checkpoint."""
  from resnet_jax import report
  config = fake_config(num_steps=4, eval_every_steps=2, checkpoint_every_steps=2)
  config.optimizer.lr = 0.0
  config.model.bn_momentum = 1.0
  summary = train_and_evaluate(config, tmp_path)
  evals = [r for r in read_metrics(tmp_path) if 'eval/top1' in r]
  assert [r['step'] for r in evals] == [2, 4] and evals[0]['eval/top1'] == evals[1]['eval/top1']
  assert summary['best']['step'] == 4
  assert '@4' in report.row(report.load_run(tmp_path), 'run')[4]
  ckpt = Checkpointer(tmp_path)
  assert ckpt.best_step() == 4
  ckpt.close()


def test_the_summary_best_counts_the_evals_before_a_resume_whose_checkpoints_are_gone(
    tmp_path, devices):
  def config(num_steps):
    c = fake_config(num_steps=num_steps, eval_every_steps=2, checkpoint_every_steps=2,
                    keep_checkpoints=1, keep_best_checkpoints=0, best_metric='eval/loss')
    c.optimizer.lr = 2.0   # diverging: the first eval is the best
    return c

  train_and_evaluate(config(4), tmp_path)
  summary = train_and_evaluate(config(6), tmp_path)
  evals = {r['step']: r['eval/loss'] for r in read_metrics(tmp_path) if 'eval/loss' in r}
  assert sorted(evals) == [2, 4, 6] and min(evals, key=evals.get) == 2
  assert summary['best']['step'] == 2 and summary['best']['eval/loss'] == evals[2]
  assert not (tmp_path / 'checkpoints' / '2').exists()


def test_a_rerun_says_it_is_finished_and_a_resume_names_what_the_config_changed(
    tmp_path, devices, capsys):
  train_and_evaluate(fake_config(num_steps=2), tmp_path)
  capsys.readouterr()
  train_and_evaluate(fake_config(num_steps=2), tmp_path)
  assert f'{tmp_path} finished at step 2: nothing to do' in capsys.readouterr().out
  longer = fake_config(num_steps=3)
  longer.optimizer.lr = 0.05
  train_and_evaluate(longer, tmp_path)
  assert ('resuming with another config than the run had (num_steps: 2 -> 3; '
          'optimizer.lr: 0.1 -> 0.05)') in capsys.readouterr().out
  (tmp_path / 'config.json').write_text('{cut short')   # only a report: the resume goes on
  assert train_and_evaluate(fake_config(num_steps=4), tmp_path)['steps'] == 4


def test_keeping_no_latest_checkpoint_is_refused(tmp_path):
  with pytest.raises(ValueError, match='keep_checkpoints=0 .* at least its latest'):
    Checkpointer(tmp_path, keep=0)
  with pytest.raises(ValueError, match='keep_best_checkpoints=-1'):
    Checkpointer(tmp_path, keep_best=-1)
  (tmp_path / 'checkpoints').mkdir()
  Checkpointer(tmp_path, keep=0, create=False).close()   # an older run's setting, only read


def test_mismatched_checkpoint_says_what_differs(tmp_path, devices):
  train_and_evaluate(fake_config(num_steps=2), tmp_path)
  other = fake_config(num_steps=4)
  other.model.name = 'small_plain'
  with pytest.raises(CheckpointMismatchError, match='model.name'):
    train_and_evaluate(other, tmp_path)


def test_a_model_written_another_way_is_the_same_model_for_a_resume(tmp_path):
  """Defaults written out ('' and 'A', 0 and 16 for a CIFAR net; 'a' for 'A') name the same net:
  compared as built, not as written."""
  saved = fake_config()
  saved.model.update(name='cifar_resnet20', shortcut='', width=0)
  same = fake_config()
  same.model.update(name='cifar_resnet20', shortcut='a', width=16)
  check_compatible(saved.to_dict(), same, tmp_path)
  other = fake_config()
  other.model.update(name='cifar_resnet20', shortcut='B', width=16)
  with pytest.raises(CheckpointMismatchError, match="model.shortcut: checkpoint 'A', config 'B'"):
    check_compatible(saved.to_dict(), other, tmp_path)


def test_a_checkpoint_of_another_state_is_refused_not_called_corrupt(tmp_path, devices):
  """A config whose state has other arrays (here: an EMA switched on) is named as a mismatch."""
  train_and_evaluate(fake_config(num_steps=2), tmp_path)
  with_ema = fake_config(num_steps=4)
  with_ema.optimizer.ema_decay = 0.9
  with pytest.raises(CheckpointMismatchError, match='ema_batch_stats/.*not in the checkpoint'):
    train_and_evaluate(with_ema, tmp_path)


def test_corrupt_checkpoint_is_reported(tmp_path, devices):
  config = fake_config(num_steps=2)
  train_and_evaluate(config, tmp_path)
  step_dir = tmp_path / 'checkpoints' / '2' / 'state'
  for f in step_dir.rglob('*'):
    if f.is_file():
      f.write_bytes(b'garbage')
  with pytest.raises(OSError, match=str(tmp_path / 'checkpoints' / '2')):
    train_and_evaluate(fake_config(num_steps=4), tmp_path)


@pytest.mark.parametrize('periods', [dict(log_every_steps=5),   # caught at a log
                                     dict(log_every_steps=10, eval_every_steps=1,
                                          checkpoint_every_steps=1)])   # at an eval, a save
def test_nan_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(tmp_path, devices,
                                                                      periods):
  train_and_evaluate(fake_config(num_steps=2), tmp_path)
  diverging = fake_config(num_steps=50, **periods)
  diverging.data.std = (0.0,)   # infinite inputs from the next step on
  with pytest.raises(FloatingPointError, match=r'at step 3 .*the latest checkpoint, step 2, '
                     r'holds the weights that gave it \(or its batch was bad\)'):
    train_and_evaluate(diverging, tmp_path)
  ckpt = Checkpointer(tmp_path)
  assert ckpt.latest_step() == 2
  ckpt.close()
  assert max(r['step'] for r in read_metrics(tmp_path)) == 2   # nothing logged from the NaN state
  # The 2-step run's summary went when the longer one started: a sweep must not count the run,
  # stopped without a summary of its own, as finished.
  assert not (tmp_path / 'summary.json').exists()


def test_a_non_finite_loss_names_the_last_checkpoint_whose_losses_were_all_finite():
  """The loss of step s is that of the weights after step s - 1: a checkpoint of step s - 1 holds
  them, an earlier one is good."""
  message = lambda saved: non_finite_loss_message(9, float('nan'), saved)
  assert 'step 4, is the last good state' in message([2, 4])
  assert 'step 8, holds the weights that gave it' in message([4, 8])
  assert 'last good state is step 4: delete checkpoints/8' in message([4, 8])
  assert 'no earlier checkpoint is kept' in message([8])
  assert 'no checkpoint was written' in message([])


# --- Whole processes: kill -9 and SIGTERM -------------------------------------------------------

def start_training(workdir, *overrides):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  return subprocess.Popen(
      [sys.executable, '-m', 'resnet_jax.main', '--config=configs/fake.py', f'--workdir={workdir}',
       '--config.checkpoint_every_steps=3', '--config.eval_every_steps=1000', *overrides],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for_step(proc, workdir, step, timeout=120):
  """Waits until metrics.jsonl shows `step` (training is under way)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, proc.stdout.read()
    metrics = workdir / 'metrics.jsonl'
    if metrics.exists() and any(json.loads(l).get('step', 0) >= step
                                for l in metrics.read_text().splitlines() if l.strip()):
      return
    time.sleep(0.05)
  raise TimeoutError(f'step {step} not reached')


def test_kill_9_at_random_moments_then_resume(tmp_path):
  rng = random.Random(0)
  workdir = tmp_path / 'run'
  total = 30
  for _ in range(3):
    proc = start_training(workdir, f'--config.num_steps={total}', '--config.log_every_steps=1')
    try:
      wait_for_step(proc, workdir, 1)
      time.sleep(rng.uniform(0.0, 1.5))
    except AssertionError:
      pass   # it finished before the kill: fine, the next run has nothing left to do
    proc.kill()
    proc.wait()
  proc = start_training(workdir, f'--config.num_steps={total}', '--config.log_every_steps=1')
  out, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, out
  # The run's own INFO lines are logged, orbax's (a dozen per checkpoint) are not.
  assert 'loop.py' in out and not re.search(r'^I.* checkpoint_manager\.py', out, re.M)
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['steps'] == total
  ckpt = Checkpointer(workdir)
  assert ckpt.latest_step() == total
  ckpt.close()


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
  proc = start_training(tmp_path, '--config.num_steps=100000', '--config.log_every_steps=1')
  wait_for_step(proc, tmp_path, 2)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out
  assert 'preempted' in out
  ckpt = Checkpointer(tmp_path)
  step = ckpt.latest_step()
  ckpt.close()
  assert step is not None and step >= 2
