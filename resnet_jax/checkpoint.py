"""Checkpoints: orbax CheckpointManager with the train state, the data iterator and the config.

Saves are asynchronous and atomic (orbax writes into a temporary directory and renames it when
complete), so a process killed during a save leaves the previous checkpoint as the latest. The
last `keep` checkpoints are kept, and the `keep_best` best by a metric among those saved with
eval metrics. Restoring places the arrays on the current mesh, so a checkpoint written on 8
devices restores onto 1 and vice versa.
"""

import contextlib
import json
import secrets
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from resnet_jax import parallel
from resnet_jax.models import registry
from resnet_jax.train.state import TrainState

CHECKPOINT_DIR = 'checkpoints'
EMA_WINDOW = 'ema_window'   # the item of a save inside the EMA BN statistics' window


class CheckpointMismatchError(ValueError):
  """The checkpoint in the workdir was written for another model or shape."""


class CheckpointError(OSError):
  """A checkpoint directory that cannot be opened or read."""


class Checkpointer:
  """Saves and restores (state, data iterator state, config) under `workdir/checkpoints`."""

  def __init__(self, workdir: str | Path, *, keep: int = 2, keep_best: int = 1,
               best_metric: str = 'eval/top1', async_save: bool = True, create: bool = True):
    """`create` False: to read a run's checkpoints, FileNotFoundError where it has none (and
    no empty checkpoint directory made)."""
    self.directory = Path(workdir).absolute() / CHECKPOINT_DIR
    if not create and not self.directory.is_dir():
      raise FileNotFoundError(f'{self.directory} not found: {workdir} is not a run with a '
                              'checkpoint')
    if create and (keep < 1 or keep_best < 0):   # a reader opens older runs as they were
      raise ValueError(f'keep_checkpoints={keep} and keep_best_checkpoints={keep_best}: a run '
                       'keeps at least its latest checkpoint (to resume from), and 0 or more best')
    self.best_metric = best_metric
    policies = [ocp.checkpoint_managers.LatestN(n=max(keep, 1))]
    if keep_best:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda m: m[best_metric], reverse=lower_is_better(best_metric),
          n=keep_best, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        # best_fn makes orbax write each save's metrics and answer best_step() from them (the
        # policy alone keeps the best in memory only: after a resume it was dropped).
        best_fn=lambda m: m[best_metric],
        best_mode='min' if lower_is_better(best_metric) else 'max',
        enable_async_checkpointing=async_save,
        create=create,
    )
    try:
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    except Exception as e:
      raise CheckpointError(f'cannot open the checkpoint directory {self.directory}: {e}') from e

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def chosen_step(self, which: str) -> int:
    """The step of the 'latest' or 'best' checkpoint; FileNotFoundError when there is none."""
    if which not in ('latest', 'best'):
      raise ValueError(f"eval.checkpoint must be 'latest' or 'best', got {which!r}")
    step = self.best_step() if which == 'best' else self.latest_step()
    if step is None:
      raise FileNotFoundError(f'no {which} checkpoint in {self.directory}')
    return step

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: TrainState, data_state: dict[str, Any] | None,
           config: ml_collections.ConfigDict, metrics: dict[str, float] | None = None,
           ema_window: dict[str, Any] | None = None) -> None:
    """Starts an (asynchronous) save of everything needed to continue at `step`; `ema_window`:
    the EMA BN statistics gathered so far for the next eval (`loop.EmaStatistics`)."""
    items = dict(state=ocp.args.StandardSave(state),
                 config=ocp.args.JsonSave(config.to_dict()))
    if data_state is not None:
      items['data'] = ocp.args.JsonSave(data_state)
    if ema_window is not None:
      items[EMA_WINDOW] = ocp.args.StandardSave(ema_window)
    saved_metrics = None
    if metrics and self.best_metric in metrics:
      saved_metrics = {k: float(v) for k, v in metrics.items()}
    self._manager.save(step, args=ocp.args.Composite(**items), metrics=saved_metrics, force=True)

  def restore(self, template: TrainState, config: ml_collections.ConfigDict,
              step: int | None = None) -> tuple[TrainState, dict[str, Any] | None]:
    """Restores onto the shardings of `template` (arrays or ShapeDtypeStructs)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    path = self._checked_step(template, config, step)
    state = self._restore_item(step, 'state', ocp.args.StandardRestore(parallel.abstract(template)))
    data_state = None
    if (path / 'data').exists():
      data_state = self._restore_item(step, 'data', ocp.args.JsonRestore())
    logging.info('restored checkpoint %s', path)
    return state, data_state

  def restore_fields(self, template: TrainState, fields: Sequence[str],
                     config: ml_collections.ConfigDict, step: int) -> dict[str, Any]:
    """Only the named fields of the saved state (the eval weights, say, without the optimizer
    state), onto the shardings of `template`'s; checked against the config and the whole state
    as `restore` checks them."""
    path = self._checked_step(template, config, step)
    target = {field: parallel.abstract(getattr(template, field)) for field in fields}
    restored = self._restore_item(step, 'state', ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
    logging.info('restored %s of checkpoint %s', ', '.join(fields), path)
    return restored

  def _checked_step(self, template: TrainState, config: ml_collections.ConfigDict,
                    step: int) -> Path:
    """The directory of checkpoint `step`, refused (CheckpointMismatchError) where its config or
    its state's arrays are not those of `config` and `template`."""
    path = self.directory / str(step)
    check_compatible(self._restore_item(step, 'config', ocp.args.JsonRestore()), config, path)
    check_same_arrays(self.saved_arrays(step), template, path)
    return path

  def restore_ema_window(self, step: int, template: Any) -> dict[str, Any] | None:
    """The `ema_window` saved at `step` onto the shardings of `template` (arrays or specs of
    the same tree); None where that save had none."""
    if not (self.directory / str(step) / EMA_WINDOW).exists():
      return None
    return self._restore_item(step, EMA_WINDOW,
                              ocp.args.StandardRestore(parallel.abstract(template)))

  def _restore_item(self, step: int, name: str, args: Any) -> Any:
    with _reading(self.directory / str(step) / name):
      return self._manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]

  def saved_arrays(self, step: int) -> Any:
    """The tree of the saved state's array metadata (`.shape`, `.dtype`), without the arrays."""
    path = self.directory / str(step) / 'state'
    with _reading(path):
      return ocp.StandardCheckpointHandler().metadata(path).tree

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


@contextlib.contextmanager
def _reading(path: Path):
  """Turns any failure to read `path` into a CheckpointError naming it."""
  try:
    yield
  except Exception as e:
    raise CheckpointError(f'checkpoint {path} could not be read ({type(e).__name__}: {e}); '
                          'it may be corrupt: move it away to resume from an earlier one') from e


def lower_is_better(metric: str) -> bool:
  return 'loss' in metric or 'error' in metric


def replaces_best(new: dict[str, float], best: dict[str, float], metric: str) -> bool:
  """Whether the later eval `new` takes the place of `best`: better or as good, the later of
  equals winning as in orbax's best_step() (the step of the 'best' checkpoint)."""
  if lower_is_better(metric):
    return new[metric] <= best[metric]
  return new[metric] >= best[metric]


def _resolved(config: dict[str, Any]) -> dict[str, Any]:
  """`config` with the model's shortcut option and width as built (a family default given as
  '' or 0, or 'a' for 'A', names the same net), where its model name is known."""
  model = config.get('model', {})
  if model.get('name') not in registry.SPECS:
    return config
  shortcut, width = registry.resolved_options(model['name'], model.get('shortcut'),
                                              model.get('width'))
  return dict(config, model=dict(model, shortcut=shortcut, width=width))


def check_compatible(saved: dict[str, Any], config: ml_collections.ConfigDict, path: Path) -> None:
  """Refuses a checkpoint written for another model or input shape, saying what differs."""
  saved, current = _resolved(saved), _resolved(config.to_dict())
  keys = [('model', k) for k in ('name', 'shortcut', 'residual', 'variant', 'width')]
  keys += [('data', k) for k in ('source', 'name', 'image_size')]
  diffs = []
  for section, key in keys:
    old = saved.get(section, {}).get(key)
    new = current.get(section, {}).get(key)
    if old is not None and old != new:
      diffs.append(f'{section}.{key}: checkpoint {old!r}, config {new!r}')
  if diffs:
    raise CheckpointMismatchError(
        f'the checkpoint {path} does not match the config ({"; ".join(diffs)}); '
        'use another --workdir or the config the checkpoint was written with')


def check_same_arrays(saved: Any, template: TrainState, path: Path) -> None:
  """Refuses a checkpoint whose arrays are not those of the config's state (another optimizer,
  an EMA switched on or off, another number of classes), naming the first differences."""
  saved_shapes = _shapes(saved, is_leaf=lambda x: hasattr(x, 'shape'))
  shapes = _shapes(template)
  diffs = [f'{k}: only in the checkpoint' for k in sorted(saved_shapes.keys() - shapes.keys())]
  diffs += [f'{k}: not in the checkpoint' for k in sorted(shapes.keys() - saved_shapes.keys())]
  diffs += [f'{k}: shape {saved_shapes[k]} in the checkpoint, {shapes[k]} for the config'
            for k in sorted(saved_shapes.keys() & shapes.keys()) if saved_shapes[k] != shapes[k]]
  if diffs:
    raise CheckpointMismatchError(
        f'the checkpoint {path} holds other arrays than this config\'s state ({len(diffs)} '
        f'differences: {"; ".join(diffs[:3])}{"; ..." if len(diffs) > 3 else ""}); use another '
        '--workdir or the config the checkpoint was written with')


def _shapes(tree: Any, is_leaf=None) -> dict[str, tuple[int, ...]]:
  """'params/conv/kernel'-style path -> shape of every array in `tree`."""
  def name(key) -> str:
    for attr in ('key', 'name', 'idx'):   # DictKey, GetAttrKey, SequenceKey
      if hasattr(key, attr):
        return str(getattr(key, attr))
    return str(key)
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return {'/'.join(name(k) for k in keys): tuple(x.shape) for keys, x in leaves}


class PreemptionWatcher:
  """Turns SIGTERM (TPU VM or SLURM preemption notice) into a stop at the next step boundary.

  With several processes, JAX's preemption sync point makes every process agree on the step;
  in a single process a signal handler sets a flag.
  """

  def __init__(self):
    self._signalled = False
    self._multi = jax.process_count() > 1
    if not self._multi:
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum, frame) -> None:
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint at the next step boundary')
    self._signalled = True

  def reached(self, step: int) -> bool:
    if self._multi:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled

  def close(self) -> None:
    if not self._multi:
      signal.signal(signal.SIGTERM, self._previous)


def check_shared_directory(directory: Path) -> None:
  """Refuses a multi-process run whose processes do not all see `directory` as one directory.

  Every process writes its part of each checkpoint there, as orbax requires: process 0 leaves a
  fresh token in it and the others must read it back.
  """
  if jax.process_count() == 1:
    return
  token = int(multihost_utils.broadcast_one_to_all(np.int64(secrets.randbits(62))))
  marker = directory / f'.shared_check_{token}'
  if jax.process_index() == 0:
    marker.write_text('')
  multihost_utils.sync_global_devices('shared directory check: written')
  blind = parallel.processes_without(marker.exists())
  if jax.process_index() == 0:
    marker.unlink()
  if blind:
    raise ValueError(f'the workdir {directory} is not shared: process(es) {blind} do not see what '
                     'process 0 writes there. Checkpoints of a multi-process run need a '
                     'filesystem or bucket that all processes reach.')


def write_json(path: Path, obj: Any) -> None:
  """Writes JSON atomically (write, then rename), process 0 only."""
  if jax.process_index() != 0:
    return
  tmp = path.with_suffix(path.suffix + '.tmp')
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))
  tmp.replace(path)
