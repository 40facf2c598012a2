"""Compares runs: `python -m resnet_jax.report WORKDIR [WORKDIR ...] [--out DIR]`.

Writes into DIR (default: the parent directory of the first WORKDIR, i.e. the sweep directory when
the runs are a sweep's points):

- `report.png`: all runs in one figure, the paper's Fig. 6 style: top-1 error (%) against
  iterations, training error (1 - train/top1) thin and dashed, test error (1 - eval/top1) bold,
  one colour per run;
- `report.md`: a Markdown table, one row per run: model, parameters, final and best eval top-1 and
  top-5 accuracy, final training error, steps and wall time; and the top-1 of each eval protocol
  that `--mode=eval` (or the sweep's `EVAL_PROTOCOLS`) ran on a run's latest checkpoint, e.g.
  `ten_crop`, the paper's ImageNet figures. Where runs differ at most in their seed (a sweep's
  `--seeds`), a second table gives each such group's final top-1: mean +- standard deviation,
  lowest and highest (the paper's "best (mean+-std)" of its 5 ResNet-110 runs).

"Best" is the evaluation with the highest top-1 (its top-5 is the top-5 of that same evaluation).
Runs still training are reported as far as they got. A directory that is not a run, or a run
with no metrics yet, is an error naming the directory (exit status 1, no traceback).

From Python (the sweep runner): `write_report(workdirs, out_dir) -> (png_path, md_path)`; it raises
`ReportError` (a ValueError) for bad input.
"""

import argparse
import json
import re
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from resnet_jax.plots import TEST_STYLE, TRAIN_STYLE, error_percent, save
from resnet_jax.progress import format_count, format_duration
from resnet_jax.writers import METRICS_FILE, read_metrics


class ReportError(ValueError):
  """Bad input to the report; the message names the directory."""


@dataclass(frozen=True)
class Run:
  path: Path
  records: list[dict[str, Any]]
  config: dict[str, Any]
  run_info: dict[str, Any]
  summary: dict[str, Any]
  protocol_evals: dict[str, dict[str, Any]]   # tag -> results on the latest checkpoint

  @property
  def evals(self) -> list[dict[str, Any]]:
    """The records of its evaluations, in step order."""
    return [r for r in self.records if 'eval/top1' in r]

  @property
  def model(self) -> str:
    return str(self.run_info.get('model') or self.config.get('model', {}).get('name') or '?')


def _read_json(path: Path) -> dict[str, Any]:
  if not path.is_file():
    return {}
  try:
    return json.loads(path.read_text())
  except ValueError as e:
    raise ReportError(f'{path}: not valid JSON ({e})') from None


def load_run(workdir: str | Path) -> Run:
  """Reads a run directory; ReportError naming it if it is not a run or has no metrics yet."""
  path = Path(workdir)
  if not path.is_dir():
    raise ReportError(f'{path}: no such directory')
  if not (path / METRICS_FILE).is_file() and not (path / 'config.json').is_file():
    raise ReportError(f'{path} is not a run directory (it has no {METRICS_FILE} or config.json)')
  try:
    records = read_metrics(path) if (path / METRICS_FILE).is_file() else []
  except ValueError as e:
    raise ReportError(str(e)) from None
  if not records:
    raise ReportError(f'{path} has no metrics yet (its {METRICS_FILE} is missing or empty)')
  return Run(path, records, _read_json(path / 'config.json'), _read_json(path / 'run_info.json'),
             _read_json(path / 'summary.json'), protocol_evals(path))


_EVAL_FILE = re.compile(r'eval_(.+)_latest_(\d+)\.json$')   # as evaluate.result_path names them


def protocol_evals(workdir: Path) -> dict[str, dict[str, Any]]:
  """The `--mode=eval` results on the run's latest checkpoint by protocol tag (the protocol with
  the settings that change its views, from the file name), those of the highest step where
  there are several."""
  found: dict[str, dict[str, Any]] = {}
  for path in workdir.glob('eval_*_latest_*.json'):
    if match := _EVAL_FILE.match(path.name):
      tag, step = match.group(1), int(match.group(2))
      if step > found.get(tag, {}).get('step', -1):
        found[tag] = dict(_read_json(path), step=step)
  return found


def short_names(paths: Sequence[Path]) -> list[str]:
  """Directory names; parent/name where names repeat."""
  names = [p.name for p in paths]
  if len(set(names)) < len(names):
    names = [f'{p.parent.name}/{p.name}' for p in paths]
  return names


def run_names(runs: Sequence[Run]) -> list[str]:
  return short_names([r.path for r in runs])


def labels(runs: Sequence[Run]) -> list[str]:
  """Legend labels: the run name, with the model where the name does not contain it."""
  return [n if r.model in n or r.model == '?' else f'{n} ({r.model})'
          for n, r in zip(run_names(runs), runs)]


def _pct(value: float | None) -> str:
  return '-' if value is None else f'{100 * value:.2f}'


def _protocol_cell(results: dict[str, Any] | None, last_step: int) -> str:
  if results is None:
    return '-'
  at = f' @{results["step"]:,}' if results['step'] != last_step else ''
  return _pct(results['eval/top1']) + at


def row(run: Run, label: str, tags: Sequence[str] = ()) -> list[str]:
  """A table row: run, model, params, top-1 final/best, top-5 final/best, train error, steps, time,
  and the top-1 of each protocol in `tags` (@ its step where that is not the run's last)."""
  evals = run.evals
  final = evals[-1] if evals else {}
  best = max(reversed(evals), key=lambda r: r['eval/top1']) if evals else {}   # ties: the later
  train = [r for r in run.records if 'train/top1' in r]
  train_err = 1 - train[-1]['train/top1'] if train else None
  last, total = run.records[-1]['step'], run.run_info.get('steps')
  steps = f'{last:,}' if not total or last >= total else f'{last:,} / {total:,}'
  if run.summary.get('preempted'):
    steps += ' (preempted)'
  # metrics.jsonl's time runs on across resumes; the summary's wall time is the last session's
  wall = run.records[-1].get('time', run.summary.get('wall_time_s'))
  params = run.run_info.get('params')
  best_at = f' @{best["step"]:,}' if best else ''
  protocols = [_protocol_cell(run.protocol_evals.get(tag), last) for tag in tags]
  return [label, run.model, format_count(params) if params else '-',
          _pct(final.get('eval/top1')), _pct(best.get('eval/top1')) + best_at,
          _pct(final.get('eval/top5')), _pct(best.get('eval/top5')),
          _pct(train_err), steps, format_duration(wall) if wall is not None else '-', *protocols]


HEADER = ['run', 'model', 'params', 'top-1 final (%)', 'top-1 best (%)', 'top-5 final (%)',
          'top-5 best (%)', 'train error final (%)', 'steps', 'wall time']


def markdown_table(runs: Sequence[Run]) -> str:
  tags = sorted({tag for r in runs for tag in r.protocol_evals})
  header = HEADER + [f'top-1 {tag} (%)' for tag in tags]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(row(r, l, tags)) + ' |' for r, l in zip(runs, run_names(runs))]
  return '\n'.join(lines)


def seed_groups(runs: Sequence[Run]) -> list[list[int]]:
  """Indices of the runs whose configs differ at most in the seed (and eval settings), in groups
  of two or more."""
  groups: dict[str, list[int]] = {}
  for i, run in enumerate(runs):
    if run.config:
      rest = {k: v for k, v in run.config.items() if k not in ('seed', 'eval')}
      groups.setdefault(json.dumps(rest, sort_keys=True), []).append(i)
  return [g for g in groups.values() if len(g) > 1]


def seeds_table(runs: Sequence[Run]) -> str:
  """Per group of `seed_groups`: runs, final top-1 mean +- std, lowest and highest ('' if none)."""
  names = run_names(runs)
  lines = []
  for group in seed_groups(runs):
    top1 = [runs[i].evals[-1]['eval/top1'] for i in group if runs[i].evals]
    if len(top1) < 2:
      continue
    labels = {re.sub(r'(^|_)seed-\d+$', '', names[i]) or 'base' for i in group}
    label = labels.pop() if len(labels) == 1 else ', '.join(names[i] for i in group)
    lines.append(f'| {label} | {len(top1)} | {100 * statistics.mean(top1):.2f} +- '
                 f'{100 * statistics.stdev(top1):.2f} | {_pct(min(top1))} | {_pct(max(top1))} |')
  if not lines:
    return ''
  return '\n'.join(['| runs | n | top-1 final mean +- std (%) | lowest (%) | highest (%) |',
                    '|---|---:|---:|---:|---:|', *lines])


def overlay_figure(runs: Sequence[Run]) -> Figure:
  """Top-1 error (%) against iterations: train thin dashed, test bold, one colour per run."""
  fig = Figure(figsize=(9, 5.5), layout='constrained')
  ax = fig.add_subplot()
  colours = matplotlib.colormaps['tab10' if len(runs) <= 10 else 'tab20'].colors
  handles = []
  for i, (run, label) in enumerate(zip(runs, labels(runs))):
    colour = colours[i % len(colours)]
    steps, err = error_percent(run.records, 'train/top1')
    if steps.size:
      ax.plot(steps, err, color=colour, alpha=0.8, **TRAIN_STYLE)
    steps, err = error_percent(run.records, 'eval/top1')
    if steps.size:
      ax.plot(steps, err, color=colour, marker='o' if steps.size <= 30 else None, markersize=3,
              **TEST_STYLE)
    handles.append(Line2D([], [], color=colour, linewidth=2.2, label=label))
  handles += [Line2D([], [], color='k', label='train error', **TRAIN_STYLE),
              Line2D([], [], color='k', label='test error', **TEST_STYLE)]
  ax.legend(handles=handles, fontsize='small')
  ax.set_xlabel('iterations')
  ax.set_ylabel('top-1 error (%)')
  ax.set_ylim(bottom=0)
  ax.grid(True, alpha=0.3)
  return fig


def write_report(workdirs: Sequence[str | Path], out_dir: str | Path) -> tuple[Path, Path]:
  """Writes `report.png` and `report.md` of the runs into `out_dir`; returns their paths.

  Raises ReportError naming every bad directory (not a run, no metrics yet) before writing.
  """
  if not workdirs:
    raise ReportError('no runs to report')
  runs, errors = [], []
  for w in workdirs:
    try:
      runs.append(load_run(w))
    except ReportError as e:
      errors.append(str(e))
  if errors:
    raise ReportError('\n'.join(errors))
  out_dir = Path(out_dir)
  png = save(overlay_figure(runs), out_dir / 'report.png')
  md = out_dir / 'report.md'
  text = (f'# Runs\n\n![top-1 error](report.png)\n\n{markdown_table(runs)}\n\n'
          'Accuracies in %. Best: the evaluation with the highest top-1 (@ its step); '
          'top-5 best is the top-5 of that evaluation. A protocol column: the latest '
          'checkpoint evaluated with that protocol (`--mode=eval`).\n')
  if seeds := seeds_table(runs):
    text += (f'\n## Over seeds\n\nRuns whose configs differ at most in the seed; the final '
             f'evaluation\'s top-1, standard deviation over the runs (n - 1).\n\n{seeds}\n')
  md.write_text(text)
  return png, md


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m resnet_jax.report',
      description='Overlay the error curves of runs (report.png) and tabulate them (report.md).')
  parser.add_argument('workdirs', nargs='+', type=Path, metavar='WORKDIR', help='run directories')
  parser.add_argument('--out', type=Path, default=None,
                      help='output directory (default: the parent of the first WORKDIR)')
  args = parser.parse_args(argv)
  out = args.out if args.out is not None else args.workdirs[0].resolve().parent
  try:
    png, md = write_report(args.workdirs, out)
  except (ReportError, OSError) as e:
    print('\n'.join(f'error: {line}' for line in str(e).splitlines()), file=sys.stderr)
    return 1
  print(f'wrote {png} and {md}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
