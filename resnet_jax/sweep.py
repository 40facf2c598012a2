"""Runs a grid of configs: `python -m resnet_jax.sweep --config=configs/ablations/X.py --workdir=DIR`.

A sweep config file is an ordinary config file (its `get_config(arg)` gives the base run) that
also defines `get_sweep(arg) -> list[dict]`: one dict of config overrides per grid point, e.g.
`{'model.name': 'cifar_plain20'}`. Each point trains in `DIR/<point name>`, one after another on
the local devices; a point whose run finished is not run again, a point that was interrupted
resumes from its checkpoint, a preempted point (SIGTERM) stops the sweep, and a point whose loss
turns non-finite (or whose evaluation below fails) fails without stopping the others (exit
status 1, naming it). A point whose workdir was run with another config (an edited sweep file,
another --set) stops the sweep before anything runs, naming the changed keys: its results would
otherwise be reused as they are.

A sweep config may also name `EVAL_PROTOCOLS` (e.g. `('ten_crop',)`, the paper's ImageNet
tables): each finished point's final checkpoint is then evaluated with each of them as
`--mode=eval` does (once: a rerun finds the results), and the report gets a column for each.
`--seeds N` runs every point N times, with seeds S, S + 1, ... (S: `--set seed=S`, else the
config's seed; the paper reports its CIFAR ResNet-110 over 5 runs); the report then gives each
point's mean, spread and range. The run with seed S keeps the point's own name (so the runs of a
sweep made before with one seed count as its first seed); the others are named `..._seed-K`.
`--print-commands` prints one `resnet_jax.main` command per point instead, for a cluster
scheduler, then one `--mode=eval` command per point and protocol, to run after training. At
the end the report (overlay figure and table) of all finished points is written into DIR.
"""

import argparse
import copy
import importlib.util
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections

from resnet_jax.config_base import config_changes, describe_changes, unknown_field
from resnet_jax.progress import own_info_logs_only


class Sweep(NamedTuple):
  base: ml_collections.ConfigDict       # the base run
  grid: list[dict[str, Any]]            # one dict of overrides per point
  eval_protocols: tuple[str, ...]       # evaluated on each point's final checkpoint


def load_sweep(spec: str) -> Sweep:
  """Loads `path[:arg]`."""
  path, _, arg = spec.partition(':')
  if not Path(path).is_file():
    raise FileNotFoundError(f'sweep config {path} does not exist')
  module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'{path} defines no get_sweep(arg): it is not a sweep config')
  try:
    config = module.get_config(arg or None)
  except (AttributeError, KeyError) as e:
    if (message := unknown_field(e)) is None:
      raise   # a bug in the file: its traceback
    raise ValueError(f'{path}: {message}') from e
  return Sweep(config, module.get_sweep(arg or None), tuple(getattr(module, 'EVAL_PROTOCOLS', ())))


def point_name(overrides: dict[str, Any]) -> str:
  """A readable, filesystem-safe name: {'model.name': 'cifar_resnet20', 'model.shortcut': 'A'} ->
  'name-cifar_resnet20_shortcut-A'."""
  parts = [f'{k.split(".")[-1]}-{v}' for k, v in overrides.items()]
  return '_'.join(parts).replace('/', '-').replace(' ', '') or 'base'


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted-key overrides; an unknown key is an error naming it. Fields
  computed from others (`config.get_ref`) follow an override of those, as on the command line."""
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(f'sweep override {key!r}: no such config field')
    node[leaf] = value
  return config


def parse_set(items: list[str]) -> dict[str, Any]:
  """--set=key=value pairs; values are read as JSON where they parse, else as strings."""
  out = {}
  for item in items:
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'--set expects key=value, got {item!r}')
    try:
      out[key] = json.loads(value)
    except json.JSONDecodeError:
      out[key] = value
  return out


def finished_at(workdir: Path) -> int | None:
  """The last step of the finished run in `workdir`; None where it has not finished."""
  path = workdir / 'summary.json'
  if not path.exists():
    return None
  summary = json.loads(path.read_text())
  return None if summary.get('preempted', False) else summary['steps']


def command_for(spec: str, workdir: Path, overrides: dict[str, Any],
                eval_protocol: str | None = None) -> str:
  """The `resnet_jax.main` command that trains a point, or evaluates its final checkpoint with
  `eval_protocol`."""
  args = ['python', '-m', 'resnet_jax.main', f'--config={spec}', f'--workdir={workdir}']
  args += [f'--config.{k}={v}' for k, v in overrides.items()]
  if eval_protocol:   # last: they win over an eval.* override, as in protocol_configs
    args += ['--mode=eval', f'--config.eval.protocol={eval_protocol}',
             '--config.eval.checkpoint=latest']
  return ' '.join(shlex.quote(a) for a in args)


def protocol_configs(config: ml_collections.ConfigDict,
                     protocols: Sequence[str]) -> list[ml_collections.ConfigDict]:
  """`config` evaluating its latest checkpoint with each protocol; a protocol this config cannot
  use is an error naming it."""
  from resnet_jax.eval_protocols import Protocol
  configs = [apply_overrides(config, {'eval.protocol': p, 'eval.checkpoint': 'latest'})
             for p in protocols]
  for c in configs:
    Protocol.from_config(c)
  return configs


def evaluate_point(workdir: Path, step: int, configs: Sequence[ml_collections.ConfigDict]) -> None:
  """Evaluates a finished point's final checkpoint (`step`) with each config's protocol, where
  no results of that protocol on that checkpoint are there yet."""
  from resnet_jax.evaluate import evaluate_workdir, result_path
  for config in configs:
    if not result_path(workdir, config, 'latest', step).exists():
      print(f'{workdir.name}: evaluating with {config.eval.protocol}', flush=True)
      evaluate_workdir(config, workdir)


class SweepError(RuntimeError):
  """Some points failed (a non-finite loss, or their evaluation); the message names them."""


def with_seeds(grid: list[dict[str, Any]], first: int, seeds: int) -> list[dict[str, Any]]:
  """Each point `seeds` times, with seeds first, first + 1, ...: the first run is the point as
  it is (its seed `first` comes with the sweep's other settings), so a sweep run before with one
  seed is reused; the others are named by their seed."""
  if seeds < 1:
    raise ValueError(f'--seeds={seeds}: a sweep runs each point at least once')
  if seeds > 1 and any('seed' in point for point in grid):
    raise ValueError('--seeds: the sweep config varies the seed itself')
  return [{**point, **({'seed': first + k} if k else {})} for point in grid for k in range(seeds)]


def run_sweep(spec: str, workdir: str | Path, extra: dict[str, Any] | None = None,
              print_commands: bool = False, seeds: int = 1) -> list[Path]:
  """Runs (or prints) every point; returns the sub-workdirs.

  A point whose loss turns non-finite, or whose evaluation with EVAL_PROTOCOLS fails, fails
  without stopping the others; SweepError names the failed points after the report is written.
  A preempted point (SIGTERM) stops the sweep at once, with its checkpoint saved: the same command
  resumes it. With `seeds` > 1 a `seed` in `extra` is the first seed.
  """
  base, grid, protocols = load_sweep(spec)
  extra = dict(extra or {})
  grid = with_seeds(grid, extra.get('seed', base.seed), seeds)
  varied = {key for point in grid for key in point} - ({'seed'} if seeds > 1 else set())
  if clash := sorted(varied & set(extra)):
    raise ValueError(f'--set {", ".join(clash)}: the grid of {spec} varies it, and a --set '
                     'would make its points one run')
  workdir = Path(workdir)
  runs = [workdir / point_name(overrides) for overrides in grid]
  if len(set(runs)) < len(runs):
    raise ValueError(f'{spec}: two grid points have the same overrides')
  overrides = [{**extra, **point} for point in grid]   # a later seed's point wins over --set seed
  configs = [apply_overrides(base, o) for o in overrides]   # every override checked up front
  evals = [protocol_configs(c, protocols) for c in configs]   # and every protocol
  if print_commands:
    for sub, point_overrides in zip(runs, overrides):
      print(command_for(spec, sub, point_overrides))
    for sub, point_overrides in zip(runs, overrides):
      for protocol in protocols:
        print(command_for(spec, sub, point_overrides, protocol))
    return runs

  for sub, config in zip(runs, configs):
    if changes := config_changes(sub / 'config.json', config):
      raise ValueError(f'{sub} was run with another config ({describe_changes(changes, 3)}): '
                       'its results would be reused or resumed under this one; use another '
                       '--workdir, or the same sweep and --set')

  from resnet_jax.report import write_report
  from resnet_jax.train.loop import train_and_evaluate
  failed = []
  for sub, config, eval_configs in zip(runs, configs, evals):
    step = finished_at(sub)
    if step is not None:
      print(f'{sub.name}: finished before, not run again', flush=True)
    else:
      print(f'{sub.name}: training', flush=True)
      try:
        summary = train_and_evaluate(config, sub)
      except FloatingPointError as e:
        print(f'{sub.name}: failed: {e}', file=sys.stderr, flush=True)
        failed.append(sub.name)
        continue
      if summary['preempted']:
        print(f'{sub.name}: preempted, checkpoint saved; the same command resumes the sweep',
              flush=True)
        return runs
      step = summary['steps']
    try:
      evaluate_point(sub, step, eval_configs)
    except (ValueError, OSError, RuntimeError) as e:   # bad data, no checkpoint, out of memory
      print(f'{sub.name}: evaluation failed: {e}', file=sys.stderr, flush=True)
      failed.append(f'{sub.name} (evaluation)')
  finished = [r for r in runs if finished_at(r) is not None]
  if finished:
    png, md = write_report(finished, workdir)
    print(f'report: {png}, {md}')
  if failed:
    raise SweepError(f'{len(failed)} point(s) failed: {", ".join(failed)}')
  return runs


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m resnet_jax.sweep',
                                   description='Run (or print) every point of a sweep config.')
  parser.add_argument('--config', required=True, help='sweep config file (path[:arg])')
  parser.add_argument('--workdir', required=True, help='sweep directory: one sub-workdir per point')
  parser.add_argument('--print-commands', action='store_true',
                      help='print the per-point commands and exit')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='override for every point, e.g. --set=num_steps=100 (repeatable)')
  parser.add_argument('--seeds', type=int, default=1,
                      help='runs of every point, with consecutive seeds (default 1)')
  args = parser.parse_args(argv)
  own_info_logs_only()
  try:
    run_sweep(args.config, args.workdir, parse_set(args.set), args.print_commands, args.seeds)
  except (ValueError, KeyError, TypeError, OSError, SweepError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
