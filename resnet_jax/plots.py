"""Training curves of one run as PNGs: `plots/loss.png` and `plots/accuracy.png`.

Drawn from `metrics.jsonl` in the style of the paper's CIFAR figures: against iterations (with
epochs on the top axis when the records have them), training curves thin and dashed, test curves
bold. `accuracy.png` shows top-1 *error* in percent, as the paper does (top-5 error too where it
was evaluated). A run with no eval yet gets its training curves only.

Uses matplotlib's object API with the Agg canvas (no pyplot, no display, no global state).
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from resnet_jax.writers import read_metrics

Records = Sequence[dict[str, Any]]
TRAIN_STYLE = dict(linestyle='--', linewidth=1.0)
TEST_STYLE = dict(linestyle='-', linewidth=2.2)


def series(records: Records, key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of the records that have `key` (non-numbers dropped)."""
  pairs = [(r['step'], r[key]) for r in records
           if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
  if not pairs:
    return np.zeros(0), np.zeros(0)
  steps, values = zip(*pairs)
  return np.asarray(steps, float), np.asarray(values, float)


def error_percent(records: Records, key: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, 100 * (1 - accuracy)) for an accuracy key such as 'eval/top1'."""
  steps, acc = series(records, key)
  return steps, 100.0 * (1.0 - acc)


def epochs_per_step(records: Records) -> float | None:
  """The epoch/step ratio from the last record that has both, or None."""
  for r in reversed(records):
    if r.get('step') and isinstance(r.get('epoch'), (int, float)) and r['epoch'] > 0:
      return r['epoch'] / r['step']
  return None


def _axes(fig: Figure, records: Records, ylabel: str) -> Axes:
  ax = fig.add_subplot()
  ax.set_xlabel('iterations')
  ax.set_ylabel(ylabel)
  ax.grid(True, alpha=0.3)
  ratio = epochs_per_step(records)
  if ratio:
    top = ax.secondary_xaxis('top', functions=(lambda s: s * ratio, lambda e: e / ratio))
    top.set_xlabel('epochs')
  return ax


def loss_figure(records: Records, title: str = '') -> Figure | None:
  """Train and eval loss against iterations; None if there is no loss to draw."""
  curves = [(k, label, style) for k, label, style in (
      ('train/loss', 'train', TRAIN_STYLE), ('eval/loss', 'test', TEST_STYLE))
      if series(records, k)[0].size]
  if not curves:
    return None
  fig = Figure(figsize=(7, 4.5), layout='constrained')
  ax = _axes(fig, records, 'loss')
  values = []
  for key, label, style in curves:
    steps, v = series(records, key)
    ax.plot(steps, v, label=label, marker='o' if steps.size == 1 else None, **style)
    values.append(v)
  v = np.concatenate(values)
  v = v[np.isfinite(v)]
  if v.size and v.min() > 0 and v.max() / v.min() > 20:
    ax.set_yscale('log')
  ax.set_title(title or 'loss')
  ax.legend()
  return fig


def accuracy_figure(records: Records, title: str = '') -> Figure | None:
  """Top-1 (and top-5) error in percent, train thin dashed and test bold; None if no accuracy."""
  curves = [(k, label, style) for k, label, style in (
      ('train/top1', 'train top-1', TRAIN_STYLE), ('eval/top1', 'test top-1', TEST_STYLE),
      ('eval/top5', 'test top-5', dict(linestyle=':', linewidth=1.6)))
      if series(records, k)[0].size]
  if not curves:
    return None
  fig = Figure(figsize=(7, 4.5), layout='constrained')
  ax = _axes(fig, records, 'error (%)')
  for key, label, style in curves:
    steps, err = error_percent(records, key)
    ax.plot(steps, err, label=label, marker='o' if steps.size == 1 else None, **style)
  ax.set_ylim(bottom=0)
  ax.set_title(title or 'error')
  ax.legend()
  return fig


def save(fig: Figure, path: Path, dpi: int = 110) -> Path:
  """Writes atomically (temporary file, then rename), so a reader never sees half a PNG."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.stem}.tmp.png')
  fig.savefig(tmp, dpi=dpi)
  tmp.replace(path)
  return path


def write_plots(workdir: str | Path) -> list[Path]:
  """Writes `plots/loss.png` and `plots/accuracy.png` of a run; returns the paths written.

  A plot with nothing to draw yet is skipped (no metrics at all: an empty list). Raises
  FileNotFoundError if `workdir` is not a run directory (no metrics.jsonl).
  """
  workdir = Path(workdir)
  records = read_metrics(workdir)
  written = []
  for name, make, what in (('loss', loss_figure, 'loss'),
                           ('accuracy', accuracy_figure, 'error (1 - accuracy)')):
    fig = make(records, title=f'{workdir.name}: {what}')
    if fig is not None:
      written.append(save(fig, workdir / 'plots' / f'{name}.png'))
  return written
