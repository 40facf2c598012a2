"""Writers, progress, plots, report and profiler on fake runs (CPU, no TensorFlow)."""

import io
import json
import logging
import math
import statistics
import struct
import subprocess
import sys
import types
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from resnet_jax import plots, profiling, progress, report
from resnet_jax.train import loop
from resnet_jax.writers import MetricWriter, read_metrics
from tests.helpers import fake_config

TRAIN_TAGS = {'train/loss', 'train/top1', 'lr', 'images_per_sec', 'step_time_ms'}
EVAL_TAGS = {'eval/loss', 'eval/top1', 'eval/top5'}
PNG = b'\x89PNG\r\n\x1a\n'


def read_events(workdir: Path) -> list[event_pb2.Event]:
  """All events of the workdir's event files (TFRecords: length, crc, data, crc; crcs checked)."""
  events = []
  for path in sorted(Path(workdir).glob('events.out.tfevents.*')):
    data, pos = path.read_bytes(), 0
    while pos < len(data):
      header = data[pos:pos + 8]
      (length,) = struct.unpack('<Q', header)
      body = data[pos + 12:pos + 12 + length]
      assert struct.unpack('<I', data[pos + 8:pos + 12])[0] == masked_crc32c(header)
      assert struct.unpack('<I', data[pos + 12 + length:pos + 16 + length])[0] == masked_crc32c(body)
      event = event_pb2.Event()
      event.ParseFromString(body)
      events.append(event)
      pos += 16 + length
  return events


def scalars_by_tag(workdir: Path) -> dict[str, dict[int, float]]:
  out: dict[str, dict[int, float]] = {}
  for e in read_events(workdir):
    for v in e.summary.value:
      if v.HasField('simple_value'):
        out.setdefault(v.tag, {})[e.step] = v.simple_value
  return out


def log_steps(writer: MetricWriter, steps: range, *, eval_every: int = 10, seed: int = 0,
              steps_per_epoch: int = 20) -> None:
  """Made-up decreasing losses and rising accuracies, eval every `eval_every` steps."""
  rng = np.random.default_rng(seed)
  for step in steps:
    loss = 2.3 * math.exp(-step / 15) + 0.05 * rng.random()
    writer.write_scalars(step, {'train/loss': loss, 'train/top1': 1 - loss / 2.5, 'lr': 0.1,
                                'images_per_sec': 1000.0, 'step_time_ms': 64.0},
                         epoch=step / steps_per_epoch)
    if step % eval_every == 0:
      writer.write_scalars(step, {'eval/loss': loss * 1.2, 'eval/top1': 1 - loss / 2.2,
                                  'eval/top5': min(1.0, 1.3 - loss / 2.2)},
                           epoch=step / steps_per_epoch)


def fake_run(root: Path, name: str, *, steps: int = 40, eval_every: int = 10,
             model: str = 'cifar_resnet20', seed: int = 0, finished: bool = True) -> Path:
  workdir = root / name
  workdir.mkdir(parents=True)
  config = {'model': {'name': model, 'shortcut': 'A'}, 'batch_size': 64, 'seed': seed,
            'profile_steps': (0, 0), 'data': {'mean': (0.5,), 'source': 'fake'}}
  info = {'model': model, 'params': 272474, 'devices': '8 x cpu', 'processes': 1,
          'mesh': {'data': 8}, 'global_batch': 64, 'per_device_batch': 8,
          'train_examples': 1280, 'eval_examples': 256, 'steps_per_epoch': 20, 'steps': steps}
  (workdir / 'config.json').write_text(json.dumps(config))
  (workdir / 'run_info.json').write_text(json.dumps(info))
  with MetricWriter(workdir, enabled=True, start_step=0) as w:
    w.write_config(config)
    log_steps(w, range(1, steps + 1), eval_every=eval_every, seed=seed)
  if finished:
    records = read_metrics(workdir)
    last_eval = [r for r in records if 'eval/top1' in r][-1]
    final = {k: last_eval[k] for k in EVAL_TAGS}
    (workdir / 'summary.json').write_text(json.dumps(
        {'final': final, 'best': dict(final, step=last_eval['step']), 'steps': steps,
         'wall_time_s': 12.5, 'preempted': False}))
  return workdir


def assert_png(path: Path, min_size: int = 200) -> None:
  assert path.is_file(), path
  assert path.read_bytes()[:8] == PNG
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and min(image.shape[:2]) >= min_size, image.shape


# writers

def test_event_files_hold_the_tags(tmp_path):
  workdir = fake_run(tmp_path, 'run')
  tags = scalars_by_tag(workdir)
  assert TRAIN_TAGS | EVAL_TAGS <= set(tags)
  assert sorted(tags['train/loss']) == list(range(1, 41))
  assert sorted(tags['eval/top1']) == [10, 20, 30, 40]
  records = read_metrics(workdir)
  assert tags['train/loss'][40] == pytest.approx(records[-2]['train/loss'], rel=1e-6)
  all_tags = {v.tag for e in read_events(workdir) for v in e.summary.value}
  assert 'config/text_summary' in all_tags
  assert '_hparams_/experiment' in all_tags and '_hparams_/session_start_info' in all_tags


def test_metrics_jsonl_schema(tmp_path):
  workdir = fake_run(tmp_path, 'run')
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  records = [json.loads(l) for l in lines]
  assert records == read_metrics(workdir)
  train = [r for r in records if 'train/loss' in r]
  evals = [r for r in records if 'eval/top1' in r]
  assert [r['step'] for r in train] == list(range(1, 41))
  assert [r['step'] for r in evals] == [10, 20, 30, 40]
  assert all(a['step'] <= b['step'] and a['time'] <= b['time'] for a, b in zip(records, records[1:]))
  assert set(train[0]) == {'step', 'epoch', 'time'} | TRAIN_TAGS
  assert set(evals[0]) == {'step', 'epoch', 'time'} | EVAL_TAGS
  assert evals[0]['epoch'] == 0.5
  # The values logged (log_steps' seed-0 noise, drawn again), not only their shape.
  noise = np.random.default_rng(0).random(40)
  losses = [2.3 * math.exp(-s / 15) + 0.05 * noise[s - 1] for s in range(1, 41)]
  assert [r['train/loss'] for r in train] == pytest.approx(losses, rel=1e-6)
  assert [r['eval/top1'] for r in evals] == pytest.approx(
      [1 - losses[s - 1] / 2.2 for s in (10, 20, 30, 40)], rel=1e-6)


def test_each_line_is_on_disk_before_close(tmp_path):
  w = MetricWriter(tmp_path, enabled=True, start_step=0)
  w.write_scalars(1, {'train/loss': np.float32(2.0)}, epoch=0.1)
  assert read_metrics(tmp_path)[0]['train/loss'] == 2.0   # flushed, not closed
  assert 'train/loss' in scalars_by_tag(tmp_path)
  w.close()


def test_disabled_writer_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  with MetricWriter(workdir, enabled=False, start_step=0) as w:
    w.write_config({'a': 1})
    w.write_scalars(1, {'train/loss': 1.0})
    w.write_image('x', 1, np.zeros((4, 4, 3), np.uint8))
    w.flush()
  assert not workdir.exists()


def test_write_image_png_and_array(tmp_path):
  workdir = fake_run(tmp_path, 'run')
  [loss_png, _] = plots.write_plots(workdir)
  with MetricWriter(workdir, enabled=True, start_step=40) as w:
    w.write_image('plots/loss', 40, loss_png)
    w.write_image('noise', 40, np.random.default_rng(0).random((8, 8)))
    with pytest.raises(ValueError, match='not a PNG'):
      w.write_image('bad', 40, workdir / 'config.json')
  images = {v.tag: v.image for e in read_events(workdir) for v in e.summary.value
            if v.HasField('image')}
  assert images['plots/loss'].encoded_image_string == loss_png.read_bytes()
  h, w_, _ = matplotlib.image.imread(loss_png).shape
  assert (images['plots/loss'].height, images['plots/loss'].width) == (h, w_)
  assert images['noise'].encoded_image_string[:8] == PNG


def test_resume_supersedes_repeated_steps(tmp_path):
  with MetricWriter(tmp_path, enabled=True, start_step=0) as w:
    log_steps(w, range(1, 31))                 # crashed after step 30 (eval at 30), checkpoint at 20
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 31, "tr')                 # ... while writing a line
  old_time = json.loads((tmp_path / 'metrics.jsonl').read_text().splitlines()[-2])['time']
  with MetricWriter(tmp_path, enabled=True, start_step=20) as w:
    log_steps(w, range(21, 36), seed=1)        # resumed from step 20
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]   # every line whole, on disk too
  assert records == read_metrics(tmp_path)
  train_steps = [r['step'] for r in records if 'train/loss' in r]
  assert train_steps == list(range(1, 36))
  assert [r['step'] for r in records if 'eval/top1' in r] == [10, 20, 30]
  resumed = next(r for r in records if r['step'] == 21)
  assert resumed['time'] >= old_time   # the clock goes on from the lost steps
  purge = [e for e in read_events(tmp_path) if e.HasField('session_log')]
  assert [e.step for e in purge] == [21]        # TensorBoard hides the old events from 21 on


def test_a_restart_before_the_first_checkpoint_supersedes_everything(tmp_path):
  with MetricWriter(tmp_path, enabled=True, start_step=0) as w:
    w.write_config({'a': 1})
    log_steps(w, range(1, 6))
  with MetricWriter(tmp_path, enabled=True, start_step=0) as w:   # no checkpoint: from step 0 again
    w.write_config({'a': 1})
    log_steps(w, range(1, 3), seed=1)
  assert [r['step'] for r in read_metrics(tmp_path)] == [1, 2]
  purge = [e for e in read_events(tmp_path) if e.HasField('session_log')]
  assert [e.step for e in purge] == [0]         # the old config (step 0) hidden too


def test_resuming_repairs_a_file_that_older_code_damaged(tmp_path, caplog):
  """Appending after a torn line and keeping repeated steps, as the writer once did."""
  lines = ['{"step": 10, "time": 1}', '{"step": 20, "ti{"step": 20, "time": 2}',
           '{"step": 30, "time": 3}', '{"step": 20, "time": 4}', '{"step": 30, "time": 5}',
           '{"step": 40, "time": 6}']
  (tmp_path / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')
  with caplog.at_level(logging.WARNING):
    MetricWriter(tmp_path, enabled=True, start_step=30).close()
  assert 'metrics.jsonl:2: malformed' in caplog.text
  assert [(r['step'], r['time']) for r in read_metrics(tmp_path)] == [(10, 1), (20, 4), (30, 5)]


def test_tensorboard_reads_the_event_files(tmp_path):
  """Where TensorBoard is installed (the GPU hosts), its own reader agrees with ours."""
  ea = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
  workdir = fake_run(tmp_path, 'run', steps=25, finished=False)   # crashed after 25
  with MetricWriter(workdir, enabled=True, start_step=20) as w:     # resumed from 20
    log_steps(w, range(21, 31), seed=1)
    w.write_image('plots/loss', 30, plots.write_plots(workdir)[0])
  acc = ea.EventAccumulator(str(workdir), size_guidance={'scalars': 0, 'images': 0, 'tensors': 0})
  acc.Reload()
  assert TRAIN_TAGS | EVAL_TAGS <= set(acc.Tags()['scalars'])
  loss = {e.step: e.value for e in acc.Scalars('train/loss')}
  assert sorted(loss) == list(range(1, 31))                          # the repeats purged
  ours = {r['step']: r['train/loss'] for r in read_metrics(workdir) if 'train/loss' in r}
  assert loss == pytest.approx(ours, rel=1e-6)
  assert [e.step for e in acc.Scalars('eval/top1')] == [10, 20, 30]
  assert 'plots/loss' in acc.Tags()['images']
  assert 'config/text_summary' in acc.Tags()['tensors']
  assert '_hparams_/experiment' in acc.PluginTagToContent('hparams')


def test_read_metrics_errors_name_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match='nowhere'):
    read_metrics(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match=f'{tmp_path.name}.*not a run directory'):
    read_metrics(tmp_path)
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1, "lr": 0.1}\n{"step": 2, "lr')
  assert read_metrics(tmp_path) == [{'step': 1, 'lr': 0.1}]    # torn last line skipped
  (tmp_path / 'metrics.jsonl').write_text('garbage\n{"step": 1}\n')
  with pytest.raises(ValueError, match='metrics.jsonl:1'):
    read_metrics(tmp_path)


# plots

def test_write_plots(tmp_path):
  workdir = fake_run(tmp_path, 'run')
  paths = plots.write_plots(workdir)
  assert paths == [workdir / 'plots' / 'loss.png', workdir / 'plots' / 'accuracy.png']
  for p in paths:
    assert_png(p)
  assert sorted(p.name for p in (workdir / 'plots').iterdir()) == ['accuracy.png', 'loss.png']


def test_write_plots_without_eval_or_metrics(tmp_path):
  workdir = fake_run(tmp_path, 'noeval', steps=5, eval_every=1000, finished=False)
  for p in plots.write_plots(workdir):
    assert_png(p)
  empty = tmp_path / 'empty'
  MetricWriter(empty, enabled=True, start_step=0).close()    # a run that has logged nothing yet
  assert plots.write_plots(empty) == []


# report

def test_report_overlays_two_runs(tmp_path):
  a = fake_run(tmp_path, 'plain20', model='cifar_plain20', seed=0)
  # As after a resume: metrics.jsonl's time runs on (3725 s), the summary's is the last session's
  lines = (a / 'metrics.jsonl').read_text().splitlines()
  last = dict(json.loads(lines[-1]), time=3725.0)
  (a / 'metrics.jsonl').write_text('\n'.join(lines[:-1] + [json.dumps(last)]) + '\n')
  b = fake_run(tmp_path, 'resnet20', model='cifar_resnet20', seed=1, finished=False)
  png, md = report.write_report([a, b], tmp_path / 'out')
  assert_png(png)
  table = md.read_text()
  rows = [l for l in table.splitlines() if l.startswith('| ')]
  assert len(rows) == 3                                   # header and one row per run
  assert rows[1].startswith('| plain20 | cifar_plain20 | 272.5K |')
  assert rows[2].startswith('| resnet20 | cifar_resnet20 |')
  final = [r for r in read_metrics(a) if 'eval/top1' in r][-1]
  assert f'{100 * final["eval/top1"]:.2f}' in rows[1]
  assert '1:02:05' in rows[1] and '0:12' not in rows[1]   # the whole run's time, not 12.5 s


def test_report_has_a_column_per_eval_protocol_of_the_latest_checkpoint(tmp_path):
  a, b = fake_run(tmp_path, 'a'), fake_run(tmp_path, 'b', seed=1)
  def evaluated(run, tag, which, step, top1):
    (run / f'eval_{tag}_{which}_{step}.json').write_text(json.dumps(   # the tag: from the name
        {'protocol': tag.split('-')[0], 'checkpoint': which, 'step': step, 'eval/top1': top1}))
  evaluated(a, 'ten_crop', 'latest', 30, 0.5)       # an earlier checkpoint's: superseded
  evaluated(a, 'ten_crop', 'latest', 40, 0.61234)
  evaluated(a, 'ten_crop', 'best', 20, 0.9)         # the best checkpoint's: not the column
  evaluated(a, 'multi_scale-16-24', 'latest', 40, 0.7)
  evaluated(b, 'ten_crop', 'latest', 30, 0.4)       # not the run's last step: said
  _, md = report.write_report([a, b], tmp_path / 'out')
  rows = [l for l in md.read_text().splitlines() if l.startswith('| ')]
  assert rows[0].endswith('| top-1 multi_scale-16-24 (%) | top-1 ten_crop (%) |')
  assert rows[1].endswith('| 70.00 | 61.23 |')
  assert rows[2].endswith('| - | 40.00 @30 |')


def test_report_gives_mean_spread_and_range_over_runs_that_differ_in_seed_only(tmp_path):
  seeded = [fake_run(tmp_path, f'resnet20_seed-{k}', seed=k) for k in range(3)]
  other = fake_run(tmp_path, 'plain20', model='cifar_plain20', seed=5)
  _, md = report.write_report([*seeded, other], tmp_path / 'out')
  text = md.read_text()
  finals = [[r for r in read_metrics(w) if 'eval/top1' in r][-1]['eval/top1'] for w in seeded]
  assert len(set(finals)) == 3
  section = text.split('## Over seeds')[1]
  [row] = [l for l in section.splitlines() if l.startswith('| resnet20')]
  assert row == (f'| resnet20 | 3 | {100 * statistics.mean(finals):.2f} +- '
                 f'{100 * statistics.stdev(finals):.2f} | {100 * min(finals):.2f} | '
                 f'{100 * max(finals):.2f} |')
  assert 'plain20' not in section
  _, md = report.write_report([seeded[0], other], tmp_path / 'out2')
  assert 'Over seeds' not in md.read_text()


def test_report_cli_default_out_is_the_parent(tmp_path, capsys):
  a, b = fake_run(tmp_path, 'a'), fake_run(tmp_path, 'b', seed=2)
  assert report.main([str(a), str(b)]) == 0
  assert (tmp_path / 'report.png').is_file() and (tmp_path / 'report.md').is_file()
  assert 'report.md' in capsys.readouterr().out


@pytest.mark.parametrize('kind', ['not_a_run', 'no_metrics', 'missing'])
def test_report_bad_input(tmp_path, capsys, kind):
  good = fake_run(tmp_path, 'good')
  bad = tmp_path / kind
  if kind == 'not_a_run':
    bad.mkdir()
    (bad / 'notes.txt').write_text('hello')
  elif kind == 'no_metrics':
    bad.mkdir()
    (bad / 'config.json').write_text('{}')
  code = report.main([str(good), str(bad), '--out', str(tmp_path / 'out')])
  err = capsys.readouterr().err
  assert code != 0
  assert str(bad) in err and 'Traceback' not in err
  assert not (tmp_path / 'out' / 'report.png').exists()


def test_report_module_exits_nonzero_without_traceback(tmp_path):
  bad = tmp_path / 'empty_dir'
  bad.mkdir()
  proc = subprocess.run([sys.executable, '-m', 'resnet_jax.report', str(bad)],
                        capture_output=True, text=True, cwd=Path(__file__).parents[1])
  assert proc.returncode == 1
  assert f'{bad} is not a run directory' in proc.stderr and 'Traceback' not in proc.stderr


# progress and summaries

class FakeTTY(io.StringIO):
  def isatty(self):
    return True


def test_progress_plain_lines(tmp_path):
  out = io.StringIO()
  p = progress.Progress(40, enabled=True, stream=out, interval_s=0)
  for step in (10, 20):
    p.update(step, {'train/loss': 1.2345, 'train/top1': 0.5, 'lr': 0.1, 'images_per_sec': 5000,
                    'step_time_ms': 12.8}, epoch=step / 20)
  p.write('step 20: eval/top1 0.4512')
  p.close()
  lines = out.getvalue().splitlines()
  assert lines[0].startswith('step 10/40 (25%) | epoch 0.50 | loss 1.234 | top1 50.00% | lr 0.1')
  assert '5K img/s' in lines[0] and 'ETA' in lines[0]
  assert lines[1].startswith('step 20/40') and lines[2] == 'step 20: eval/top1 0.4512'
  assert '\r' not in out.getvalue()


def test_progress_throttles_plain_lines_but_shows_first_and_last():
  out = io.StringIO()
  p = progress.Progress(30, enabled=True, stream=out, interval_s=3600)
  for step in (10, 20, 30):
    p.update(step, {'train/loss': 1.0})
  assert [l.split('/')[0] for l in out.getvalue().splitlines()] == ['step 10', 'step 30']


def test_progress_tty_redraws_one_line():
  out = FakeTTY()
  p = progress.Progress(40, enabled=True, stream=out, initial_step=10)
  p.update(20, {'train/loss': 1.0})
  p.update(30, {'train/loss': 0.9})
  p.write('eval done')
  p.close()
  text = out.getvalue()
  assert text.startswith('resuming at step 10 of 40\n')
  assert text.count('\n') == 3 and '\r\x1b[Kstep 30/40' in text and 'eval done\n' in text


def test_progress_disabled_is_quiet():
  out = io.StringIO()
  p = progress.Progress(40, enabled=False, stream=out, initial_step=5)
  p.update(10, {'train/loss': 1.0})
  p.write('hello')
  p.close()
  assert out.getvalue() == ''


def test_start_and_end_summaries():
  info = {'model': 'resnet50', 'params': 25557032, 'devices': '8 x NVIDIA H100', 'processes': 1,
          'mesh': {'data': 8}, 'global_batch': 1024, 'per_device_batch': 128,
          'train_examples': 1281167, 'eval_examples': 50000, 'steps': 112590,
          'steps_per_epoch': 1251}
  text = progress.format_start_summary(info)
  for part in ('resnet50', '25.56M (25,557,032)', '8 x NVIDIA H100 on 1 process', 'data=8',
               '1024 global, 128 per device', '1,281,167 train, 50,000 eval', '112,590'):
    assert part in text
  assert progress.format_start_summary({'model': 'x'}) == 'run\n  model  x'
  assert '? train, 10 eval' in progress.format_start_summary({'eval_examples': 10, 'steps': '?'})
  end = progress.format_end_summary({
      'final': {'eval/top1': 0.7612, 'eval/loss': 0.95},
      'best': {'eval/top1': 0.7620, 'eval/loss': 0.94, 'step': 110000},
      'steps': 112590, 'wall_time_s': 3 * 3600 + 5, 'preempted': False})
  assert 'finished: 112,590 steps in 3:00:05' in end
  assert '76.12%' in end and '76.20%' in end and 'best (step 110,000)' in end
  assert 'preempted at step 7' in progress.format_end_summary(
      {'final': {}, 'best': {}, 'steps': 7, 'wall_time_s': 1.0, 'preempted': True})
  assert 'finished: ? steps' in progress.format_end_summary({})


# what a run writes and prints

def test_a_run_logs_plots_profiles_and_reports(tmp_path, capsys, devices):
  workdir = tmp_path / 'run'
  config = fake_config(num_steps=6, eval_every_steps=3, log_every_steps=1, profile_steps=(4, 5))
  loop.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert 'small_resnet' in out and 'parameters' in out            # the start summary
  assert 'step 6/6' in out and 'step 3: eval/loss' in out         # progress, evals
  assert 'finished: 6 steps' in out                               # the end summary
  events = read_events(workdir)
  tags = {v.tag for e in events for v in e.summary.value}
  assert {'plots/loss', 'plots/accuracy', 'config/text_summary', '_hparams_/experiment',
          'train/loss', 'eval/top1'} <= tags
  assert sorted(scalars_by_tag(workdir)['train/loss']) == list(range(1, 7))
  assert list((workdir / 'profile').glob('**/*.xplane.pb'))     # steps 4-5 traced


# profiler

def test_profiler_off_and_bad_range(tmp_path):
  p = profiling.StepProfiler(tmp_path, (0, 0))
  for step in range(5):
    p.before_step(step)
    p.after_step(step + 1)
  p.close()
  assert not (tmp_path / 'profile').exists()
  with pytest.raises(ValueError, match='profile_steps'):
    profiling.StepProfiler(tmp_path, (5, 2))


def test_profiler_traces_the_range(tmp_path):
  import jax
  import jax.numpy as jnp
  f = jax.jit(lambda x: x * 2 + 1)
  x = jnp.ones(4)
  p = profiling.StepProfiler(tmp_path, (2, 3))
  started = []
  for step in range(5):
    p.before_step(step)
    started.append(p.active)
    x = f(x)
    p.after_step(step + 1, x)
  p.close()
  assert started == [False, True, True, False, False]
  assert any(f.is_file() for f in (tmp_path / 'profile').rglob('*'))
  # The processes of one host would write one file (the trace is named by host and second).
  assert (profiling.StepProfiler(tmp_path, (2, 3), process_index=1, process_count=2).logdir
          == tmp_path / 'profile' / 'process_1')


@pytest.mark.parametrize('kernel, category', [
    ('sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc', 'conv forward'),
    ('sm90_xmma_dgrad_implicit_gemm_bf16bf16', 'conv data-grad'),
    ('sm90_xmma_wgrad_indexed_implicit_gemm_bf16', 'conv weight-grad'),
    ('nvjet_sm90_tst_256x128_64x4_1x2_h_bx_coopA_bias_TNT', 'GEMM (1x1 convs, dense)'),
    ('input_reduce_fusion_72', 'reduction fusions (BN statistics)'),
    ('loop_convert_fusion_2', 'elementwise fusions'),      # 'convert' is not a conv
    ('input_scatter_fusion', 'max-pool, scatter'),
    ('memcpy32_post', 'copies and transposes'),
])
def test_kernel_categories_come_from_kernel_names(kernel, category):
  assert profiling.kernel_category(kernel) == category


def test_the_kernel_breakdown_counts_one_gpu():
  planes = [types.SimpleNamespace(name=n) for n in
            ('/host:CPU', '/device:GPU:10', '/device:GPU:2', '/device:GPU:0', '/device:TPU:0')]
  assert profiling.first_gpu(planes).name == '/device:GPU:0'
  assert profiling.first_gpu(planes[:3]).name == '/device:GPU:2'
  assert profiling.first_gpu(planes[:1]) is None


def test_kernel_breakdown_needs_a_trace(tmp_path):
  with pytest.raises(FileNotFoundError, match='xplane'):
    profiling.kernel_breakdown(tmp_path, num_steps=1, step_ms=1.0)


def test_writer_never_imports_torch_where_it_is_installed(tmp_path):
  """tensorboardX imports torch where it is installed (seconds of start-up); the writer keeps it
  out. A stand-in torch package that fails on import plays the installed torch."""
  (tmp_path / 'torch').mkdir()
  (tmp_path / 'torch' / '__init__.py').write_text("raise RuntimeError('torch was imported')\n")
  script = (
      "import sys\n"
      "from resnet_jax.writers import MetricWriter\n"
      f"w = MetricWriter({str(tmp_path / 'run')!r}, enabled=True, start_step=0)\n"
      "w.write_config({'a': 1})\n"
      "w.write_scalars(1, {'train/loss': 0.5})\n"
      "w.write_image('x', 1, __import__('numpy').zeros((4, 4), 'uint8'))\n"
      "w.close()\n"
      "assert 'torch' not in sys.modules\n"
      "print('ok')\n")
  env = dict(__import__('os').environ, PYTHONPATH=f'{tmp_path}:{Path.cwd()}')
  out = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True)
  assert out.returncode == 0 and out.stdout.strip() == 'ok', out.stderr
  assert len(read_events(tmp_path / 'run')) >= 4


@pytest.mark.parametrize('name, value, text', [('eval/top1', 0.9574, '95.74%'),
                                               ('eval/live_top5', 0.5, '50.00%'),
                                               ('eval/live_loss', 0.21969, '0.2197'),
                                               ('lr', 0.1, '0.1')])
def test_accuracies_print_as_percentages(name, value, text):
  assert progress.format_metric(name, value) == text


def test_plots_import_in_the_background_only_after_the_inputs_exist(tmp_path, devices, monkeypatch):
  """grain and tfds load modules under etils' lazy imports, which swap the process-wide
  __import__; matplotlib imported in a thread meanwhile failed on its relative imports."""
  events = []
  create_trainer, import_in_background = loop.create_trainer, loop._import_in_background

  def recorded_create_trainer(*args, **kwargs):
    built = create_trainer(*args, **kwargs)
    events.append('inputs')
    return built

  def recorded_import(name):
    events.append(name)
    return import_in_background(name)

  monkeypatch.setattr(loop, 'create_trainer', recorded_create_trainer)
  monkeypatch.setattr(loop, '_import_in_background', recorded_import)
  loop.train_and_evaluate(fake_config(num_steps=2), tmp_path)
  assert events == ['inputs', 'resnet_jax.plots']
  assert (tmp_path / 'plots').is_dir()
