"""What a researcher sees on the console: a progress line and the start and end summaries.

    progress = Progress(total_steps, enabled=jax.process_index() == 0, initial_step=start_step)
    progress.update(step, {'train/loss': 1.9, 'train/top1': 0.31, 'lr': 0.1, ...}, epoch=0.25)
    progress.write('step 390: eval/top1 0.4512')     # a line that stays
    progress.close()

In a terminal the progress is one line, redrawn in place; in a log file or pipe it is a plain
line at most every `interval_s` seconds (and always at the first and the last step). A disabled
Progress (processes other than 0) prints nothing. The ETA comes from the mean rate since the first
update, so compilation does not count. The format_* functions are pure.
"""

import logging
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from absl import logging as absl_logging

_PACKAGE = str(Path(__file__).parent)   # as the code objects name their files


def _own_or_warning(record: logging.LogRecord) -> bool:
  return record.levelno >= logging.WARNING or record.pathname.startswith(_PACKAGE)


def own_info_logs_only() -> None:
  """Below WARNING, the absl log shows this package's lines only: orbax writes a dozen INFO
  lines per checkpoint (most of a short run's log), which drowned the run's own."""
  handler = absl_logging.get_absl_handler()
  if _own_or_warning not in handler.filters:
    handler.addFilter(_own_or_warning)


def format_duration(seconds: float) -> str:
  """3725 -> '1:02:05'; 65 -> '1:05'; days as '2d 3:04:05'."""
  seconds = max(0, int(round(seconds)))
  days, rest = divmod(seconds, 86400)
  hours, rest = divmod(rest, 3600)
  minutes, secs = divmod(rest, 60)
  text = f'{hours}:{minutes:02d}:{secs:02d}' if hours or days else f'{minutes}:{secs:02d}'
  return f'{days}d {text}' if days else text


def format_count(n: float) -> str:
  """272474 -> '272.5K'; 25557032 -> '25.56M'."""
  for div, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
    if abs(n) >= div:
      return f'{n / div:.4g}{suffix}'
  return f'{n:.4g}'


def _n(value: Any) -> str:
  """Integers with thousands separators; anything else as is."""
  return f'{value:,}' if isinstance(value, int) and not isinstance(value, bool) else str(value)


def format_metric(name: str, value: Any) -> str:
  """Accuracies (fractions) as percentages, the rest with 4 significant digits."""
  if not isinstance(value, (int, float)):
    return str(value)
  if name.split('/')[-1].split('_')[-1].startswith('top'):   # eval/top1, eval/live_top5, ...
    return f'{100 * value:.2f}%'
  return f'{value:.4g}'


def format_progress(step: int, total: int, scalars: Mapping[str, float], *,
                    epoch: float | None = None, eta_s: float | None = None) -> str:
  """'step 120/4000 (3%) | epoch 0.31 | loss 1.234 | top1 45.60% | lr 0.1 | 5.1K img/s | ETA 2:01'."""
  width = len(str(total))
  parts = [f'step {step:>{width}}/{total} ({100 * step / max(total, 1):.0f}%)']
  if epoch is not None:
    parts.append(f'epoch {epoch:.2f}')
  for key, label in (('train/loss', 'loss'), ('train/top1', 'top1'), ('lr', 'lr')):
    if key in scalars:
      parts.append(f'{label} {format_metric(key, scalars[key])}')
  if 'images_per_sec' in scalars:
    parts.append(f'{format_count(scalars["images_per_sec"])} img/s')
  if eta_s is not None:
    parts.append(f'ETA {format_duration(eta_s)}')
  return ' | '.join(parts)


def _rows(rows: list[tuple[str, str]]) -> str:
  width = max(len(k) for k, _ in rows)
  return '\n'.join(f'  {k:<{width}}  {v}' for k, v in rows)


def format_start_summary(run_info: Mapping[str, Any]) -> str:
  """One screen about the run: model, parameters, devices, mesh, batch and dataset sizes."""
  get = run_info.get
  rows = [('model', str(get('model', '?')))]
  if 'params' in run_info:
    rows.append(('parameters', f'{format_count(get("params"))} ({_n(get("params"))})'))
  if 'teacher' in run_info:
    t = get('teacher')
    rows.append(('teacher', f'{t["model"]} ({format_count(t["params"])}) of {t["workdir"]}, '
                            f'step {_n(t["step"])}'))
  if 'devices' in run_info:
    procs = get('processes')
    rows.append(('devices', f'{get("devices")}'
                 + (f' on {procs} process{"es" if procs != 1 else ""}' if procs else '')))
  if 'mesh' in run_info:
    mesh = get('mesh')
    rows.append(('mesh', ' x '.join(f'{k}={v}' for k, v in mesh.items())
                 if isinstance(mesh, Mapping) else str(mesh)))
  if 'global_batch' in run_info:
    per = f', {get("per_device_batch")} per device' if 'per_device_batch' in run_info else ''
    rows.append(('batch', f'{get("global_batch")} global{per}'))
  if 'train_examples' in run_info or 'eval_examples' in run_info:
    rows.append(('dataset', f'{_n(get("train_examples", "?"))} train, '
                 f'{_n(get("eval_examples", "?"))} eval examples'))
  if 'steps' in run_info:
    per_epoch = f' ({_n(get("steps_per_epoch"))} per epoch)' if get('steps_per_epoch') else ''
    rows.append(('steps', f'{_n(get("steps"))}{per_epoch}'))
  return 'run\n' + _rows(rows)


def format_end_summary(summary: Mapping[str, Any]) -> str:
  """Final and best metrics side by side, steps and wall time."""
  final, best = dict(summary.get('final') or {}), dict(summary.get('best') or {})
  best_step = best.pop('step', None)
  steps = _n(summary.get('steps', '?'))
  head = f'finished: {steps} steps'
  if summary.get('preempted'):
    head = f'preempted at step {steps} (resume with the same command)'
  if 'wall_time_s' in summary:
    head += f' in {format_duration(summary["wall_time_s"])}'
  names = list(dict.fromkeys([*final, *best]))
  if not names:
    return head + '\n  (no evaluation)'
  best_label = f'best (step {_n(best_step)})' if best_step is not None else 'best'
  rows = [('metric', f'{"final":>10}  {best_label}')]
  rows += [(n, f'{format_metric(n, final.get(n, "-")):>10}  {format_metric(n, best.get(n, "-"))}')
           for n in names]
  return head + '\n' + _rows(rows)


class Progress:
  """Step progress for process 0: an updating line in a terminal, periodic lines elsewhere."""

  def __init__(self, total_steps: int, *, enabled: bool = True, initial_step: int = 0,
               stream: TextIO | None = None, tty: bool | None = None, interval_s: float = 30.0):
    self.total = int(total_steps)
    self.enabled = enabled
    self.stream = stream if stream is not None else sys.stdout
    self.tty = self.stream.isatty() if tty is None else tty
    self.interval_s = interval_s
    self._first: tuple[float, int] | None = None   # (time, step) of the first update
    self._last_print = -float('inf')
    self._line = ''                                  # the progress line now on screen (tty)
    if enabled and initial_step > 0:
      self._emit(f'resuming at step {initial_step:,} of {self.total:,}')

  def eta(self, step: int, now: float, scalars: Mapping[str, float]) -> float | None:
    """From the mean rate since the first update (compilation excluded), else step_time_ms."""
    if self._first is not None and step > self._first[1]:
      rate = (now - self._first[0]) / (step - self._first[1])
    elif 'step_time_ms' in scalars:
      rate = scalars['step_time_ms'] / 1000
    else:
      return None
    return rate * max(self.total - step, 0)

  def update(self, step: int, scalars: Mapping[str, float], *, epoch: float | None = None) -> None:
    if not self.enabled:
      return
    now = time.monotonic()
    line = format_progress(step, self.total, scalars, epoch=epoch, eta_s=self.eta(step, now, scalars))
    if self._first is None:
      self._first = (now, step)
    if self.tty:
      self._draw(line)
    elif (now - self._last_print >= self.interval_s or step >= self.total
          or self._first[1] == step):
      self._emit(line)
      self._last_print = now

  def write(self, message: str) -> None:
    """A line that stays (eval results, warnings), printed above the progress line."""
    if not self.enabled:
      return
    if self.tty and self._line:
      self.stream.write('\r\x1b[K' + message + '\n' + self._line)
      self.stream.flush()
    else:
      self._emit(message)

  def close(self) -> None:
    """Ends the progress line (tty), so that later output starts on a line of its own."""
    if self.enabled and self.tty and self._line:
      self.stream.write('\n')
      self.stream.flush()
      self._line = ''

  def _draw(self, line: str) -> None:
    self._line = line[:max(shutil.get_terminal_size().columns - 1, 20)]
    self.stream.write('\r\x1b[K' + self._line)
    self.stream.flush()

  def _emit(self, line: str) -> None:
    self.stream.write(line + '\n')
    self.stream.flush()
