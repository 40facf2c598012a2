"""The training loop: set-up, the step loop, periodic eval, logging and checkpoints.

Side effects live here (files, logging, signals); the steps it calls are pure. The loop never
waits on the device except where it must read a number: at logging, eval and checkpoint time.
"""

import concurrent.futures
import importlib
import itertools
import json
import time
from pathlib import Path
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from resnet_jax import parallel, profiling, runtime
from resnet_jax.checkpoint import (Checkpointer, PreemptionWatcher, check_shared_directory,
                                   replaces_best, write_json)
from resnet_jax.config_base import print_config_changes
from resnet_jax.models.summary import count_params
from resnet_jax.progress import Progress, format_end_summary, format_start_summary
from resnet_jax.train.restore import with_teacher
from resnet_jax.train.state import TrainState
from resnet_jax.train.trainer import Trainer, create_trainer
from resnet_jax.writers import METRICS_FILE, MetricWriter, read_metrics


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the message names the step."""


class EmaStatistics:
  """Recomputes the EMA weights' BN statistics before each evaluation, as SWA does: their mean
  over the last `num_batches` training batches before it (each augmented as the train step does).

  The EMA of the live weights' statistics does not fit the averaged weights, which are shorter
  than any of them where the weights turn within the EMA's window; with it, the EMA weights of
  a Fashion-MNIST ResNet-20 fell to chance while the live ones trained (docs/results.md).
  """

  def __init__(self, trainer: Trainer):
    self.trainer = trainer
    self.num_batches = trainer.config.optimizer.ema_bn_batches
    self.sums, self.count = None, 0

  def observe(self, step: int, state: TrainState, batch: dict[str, jax.Array]) -> None:
    """Called with each batch before the train step on it, `step` being `state.step`."""
    if not self.num_batches:
      return
    t = self.trainer
    next_eval = _next_boundary(step, t.config.eval_every_steps, t.steps_per_epoch, t.total_steps)
    if next_eval - step > self.num_batches:
      return
    # Its all-reduce and the train step's that follows are independent programs: on a CPU mesh
    # they must not overlap (parallel.finish_on_cpu_meshes).
    stats = parallel.finish_on_cpu_meshes(t.ema_batch_statistics(state, batch), t.mesh)
    self.sums = stats if self.sums is None else jax.tree.map(jnp.add, self.sums, stats)
    self.count += 1

  def window(self) -> dict[str, Any] | None:
    """What a checkpoint keeps of the batches observed for the next eval (None: none yet), so
    that a run resumed inside the window recomputes the statistics as an uninterrupted one."""
    if not self.count:
      return None
    return {'sums': self.sums, 'count': np.int32(self.count)}

  def resume(self, window: dict[str, Any] | None) -> None:
    """Continues the window that `window` (a restored `window()`) saved, where this run still
    recomputes the statistics."""
    if window is not None and self.num_batches:
      self.sums, self.count = window['sums'], int(window['count'])

  def recomputed(self, state: TrainState) -> TrainState:
    """`state` with the EMA statistics replaced by the mean of those observed since the last
    call; unchanged if none were (a run resumed just before an eval)."""
    if not self.count:
      if self.num_batches:
        logging.warning('no batch observed for the EMA BN statistics (resumed just before this '
                        'eval): the EMA weights are evaluated with the averaged statistics')
      return state
    mean = jax.tree.map(lambda s: s / self.count, self.sums)
    self.sums, self.count = None, 0
    return state.replace(ema_batch_stats=mean)


def run_info(trainer: Trainer, state: TrainState, train_input, eval_input) -> dict[str, Any]:
  n_dev = trainer.mesh.devices.size
  return {
      'model': trainer.config.model.name,
      'params': count_params(state.params),
      'devices': f'{n_dev} x {jax.devices()[0].device_kind}',
      'processes': jax.process_count(),
      'mesh': dict(trainer.mesh.shape),
      'global_batch': trainer.config.batch_size,
      'per_device_batch': trainer.config.batch_size // n_dev,
      'train_examples': train_input.num_examples,
      'eval_examples': eval_input.num_examples,
      'class_names': list(eval_input.info.class_names),
      'steps_per_epoch': trainer.steps_per_epoch,
      'steps': trainer.total_steps,
      'jax': jax.__version__,
      **({'teacher': {'workdir': str(trainer.config.distill.teacher), 'step': trainer.teacher.step,
                      'model': trainer.teacher.config.model.name,
                      'params': count_params(trainer.teacher.variables['params'])}}
         if trainer.teacher else {}),
  }


def _warn_if_teacher_changed(run_info_path: Path, teacher: dict[str, Any] | None) -> None:
  """A resumed run distilled from another teacher (or teacher checkpoint) than before: logged,
  since the run then mixes two teachers' targets."""
  try:
    before = json.loads(run_info_path.read_text()).get('teacher')
  except (OSError, ValueError):
    return
  same = lambda t: None if t is None else (t['workdir'], t['step'])
  if same(before) != same(teacher):
    logging.warning('resumed with another distillation teacher: %s before, %s now', same(before),
                    same(teacher))


def non_finite_loss_message(step: int, loss: float, saved_steps: list[int]) -> str:
  """What a NaN or infinite loss at `step` leaves in a workdir whose checkpoints are of
  `saved_steps` (ascending): which of them holds weights whose losses were all finite."""
  where = (f'loss is {loss} at step {step} (the loss of the weights after step {step - 1} on its '
           'batch); stopped without saving')
  if not saved_steps:
    advice = 'no checkpoint was written'
  elif saved_steps[-1] < step - 1:
    advice = (f'the latest checkpoint, step {saved_steps[-1]}, is the last good state (the losses '
              'of its weights and of those after them were finite)')
  else:
    earlier = [s for s in saved_steps if s < step - 1]
    advice = (f'the latest checkpoint, step {saved_steps[-1]}, holds the weights that gave it (or '
              'its batch was bad); '
              + (f'the last good state is step {earlier[-1]}: delete checkpoints/{saved_steps[-1]} '
                 'to resume from it' if earlier else 'no earlier checkpoint is kept'))
  return f'{where}: {advice}. Lower the learning rate or check the data.'


def _checked(pending: list[tuple[int, dict]], ckpt: Checkpointer) -> list[tuple[int, dict]]:
  """The pending steps' metrics fetched to the host; raises on the first non-finite loss."""
  host = jax.device_get(pending)
  for step, metrics in host:
    if not np.isfinite(metrics['loss']):
      ckpt.wait()   # a save under way counts among the checkpoints
      raise NonFiniteLossError(non_finite_loss_message(step, metrics['loss'],
                                                       sorted(ckpt.all_steps())))
  return host


def _train_scalars(pending: list[tuple[int, dict]], ckpt: Checkpointer) -> dict[str, float]:
  """The checked metrics of the steps since the last log, averaged (the last learning rate)."""
  host = [m for _, m in _checked(pending, ckpt)]
  return {'train/loss': float(np.mean([m['loss'] for m in host])),
          'train/top1': float(np.mean([m['top1'] for m in host])),
          'lr': float(host[-1]['lr'])}


def best_logged_eval(workdir: Path, metric: str, up_to_step: int) -> dict[str, float]:
  """The best eval in `workdir`'s metrics.jsonl up to `up_to_step` (a resumed run's earlier
  evals, whose checkpoints may be gone), with its step; {} where there is none."""
  if not up_to_step or not (workdir / METRICS_FILE).is_file():
    return {}
  best: dict[str, float] = {}
  for record in read_metrics(workdir):
    if metric in record and record['step'] <= up_to_step:
      evaluated = {k: v for k, v in record.items() if k.startswith('eval/')}
      if not best or replaces_best(evaluated, best, metric):
        best = dict(evaluated, step=record['step'])
  return best


def _next_boundary(step: int, every: int, steps_per_epoch: int, total: int) -> int:
  """The first step after `step` that ends a period of `every` steps (0: an epoch), or `total`."""
  period = every if every > 0 else steps_per_epoch
  return min((step // period + 1) * period, total)


def _is_boundary(step: int, every: int, steps_per_epoch: int, total: int) -> bool:
  return _next_boundary(step - 1, every, steps_per_epoch, total) == step


def _import_in_background(name: str) -> concurrent.futures.Future:
  """Imports module `name` in a thread: the future's result is the module."""
  pool = concurrent.futures.ThreadPoolExecutor(1)
  future = pool.submit(importlib.import_module, name)
  pool.shutdown(wait=False)
  return future


def _start(trainer: Trainer, state: TrainState | None,
           batches: Iterator) -> tuple[TrainState, Iterator]:
  """Start-up, all at once: the steps compile (`Trainer.compile_steps`), a thread makes the first
  batch (its functions compiling too) and this one initialises the state unless it was restored.
  Returns the state and the batches, the first one included."""
  t = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(3) as pool:
    compiling = trainer.compile_steps(pool)
    batching = pool.submit(next, batches)
    if state is None:
      state = trainer.init_state()
    first_batch = batching.result()
    for compiled in compiling:
      compiled.result()
  logging.info('steps compiled, state and first batch ready in %.1f s', time.perf_counter() - t)
  return state, itertools.chain([first_batch], batches)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
  """Trains from scratch or from the latest checkpoint in `workdir`; returns the summary."""
  runtime.configure(config)
  trainer, train_input, eval_input = create_trainer(config)   # bad data fails before any write
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  check_shared_directory(workdir)
  main = parallel.is_main_process()
  # matplotlib, for the plots at the end, takes about a second to import: a thread imports it
  # while the steps compile. Not before the inputs exist: grain and tfds load some modules under
  # etils' lazy imports, which swap the process-wide __import__ meanwhile, and matplotlib's
  # relative imports in the thread then failed ("Relative import statements not supported").
  # Not during the loop either: there it slowed the fast recipe's 3,510 steps by 0.4-1.1 s
  # (docs/results.md).
  importing_plots = _import_in_background('resnet_jax.plots')
  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints, keep_best=config.keep_best_checkpoints,
                      best_metric=config.best_metric)
  state = None
  if ckpt.latest_step() is not None:
    state, data_state = ckpt.restore(trainer.abstract_state, config)
    if data_state is not None:
      train_input.set_state(data_state)
  summary_path = workdir / 'summary.json'
  if state is not None and int(state.step) >= trainer.total_steps and summary_path.exists():
    ckpt.close()
    if main:
      print(f'{workdir} finished at step {int(state.step)}: nothing to do (another workdir '
            'starts another run)', flush=True)
    return json.loads(summary_path.read_text())
  if main:   # stale from here: a run stopped without a new one must not count as finished
    summary_path.unlink(missing_ok=True)
  if state is not None and main:
    print_config_changes(workdir / 'config.json', config, 'resuming')
  trainer = with_teacher(trainer)
  batches: Iterator = iter(train_input)
  if state is None or int(state.step) < trainer.total_steps:
    state, batches = _start(trainer, state, batches)
  start_step = int(state.step)
  total = trainer.total_steps

  info = run_info(trainer, state, train_input, eval_input)
  if start_step > 0:
    _warn_if_teacher_changed(workdir / 'run_info.json', info.get('teacher'))
  write_json(workdir / 'config.json', config.to_dict())
  write_json(workdir / 'run_info.json', info)
  writer = MetricWriter(workdir, enabled=main, start_step=start_step)
  if start_step == 0:
    writer.write_config(config.to_dict())
  if main:
    print(format_start_summary(info), flush=True)
  progress = Progress(total, enabled=main, initial_step=start_step)
  profiler = profiling.StepProfiler(workdir, tuple(config.profile_steps),
                                    process_index=jax.process_index(),
                                    process_count=jax.process_count())
  preemption = PreemptionWatcher()
  ema_statistics = EmaStatistics(trainer)
  if start_step > 0:
    ema_statistics.resume(ckpt.restore_ema_window(
        start_step, {'sums': trainer.abstract_state.ema_batch_stats,
                     'count': jax.ShapeDtypeStruct((), np.int32,
                                                   sharding=parallel.replicated(trainer.mesh))}))

  pending: list[tuple[int, dict]] = []
  # A finished run without its summary (stopped after its last checkpoint) evaluates it again.
  eval_metrics = trainer.evaluate(state, eval_input) if start_step >= total else {}
  best = best_logged_eval(workdir, config.best_metric, start_step)   # evals before a resume
  last_log_time, last_log_step = time.perf_counter(), start_step
  t0 = time.perf_counter()
  step = start_step
  logging.info('training from step %d of %d', step, total)
  try:
    while step < total:
      profiler.before_step(step)
      batch = next(batches)
      ema_statistics.observe(step, state, batch)
      state, metrics = trainer.train_step(state, batch)
      step += 1
      pending.append((step, metrics))
      profiler.after_step(step, state)
      preempted = preemption.reached(step)
      if step % config.log_every_steps == 0 or step == total or preempted:
        scalars = _train_scalars(pending, ckpt)
        now = time.perf_counter()
        dt = (now - last_log_time) / max(step - last_log_step, 1)
        scalars.update(images_per_sec=config.batch_size / dt, step_time_ms=1000 * dt)
        last_log_time, last_log_step, pending = now, step, []
        writer.write_scalars(step, scalars, epoch=step / trainer.steps_per_epoch)
        progress.update(step, scalars, epoch=step / trainer.steps_per_epoch)
      evaluated = _is_boundary(step, config.eval_every_steps, trainer.steps_per_epoch, total)
      if (preempted or evaluated
          or _is_boundary(step, config.checkpoint_every_steps, trainer.steps_per_epoch, total)):
        # Never evaluate or checkpoint a state whose losses were not checked; the next log still
        # averages them.
        pending = _checked(pending, ckpt)
        if evaluated:
          state = ema_statistics.recomputed(state)
          eval_metrics = trainer.evaluate(state, eval_input)
          writer.write_scalars(step, eval_metrics, epoch=step / trainer.steps_per_epoch)
          progress.write(f'step {step}: '
                         + ', '.join(f'{k} {v:.4f}' for k, v in eval_metrics.items()))
          if not best or replaces_best(eval_metrics, best, config.best_metric):
            best = dict(eval_metrics, step=step)
        ckpt.save(step, state, train_input.get_state(), config,
                  eval_metrics if evaluated else None, ema_statistics.window())
        # The next logged rate measures training steps only, not this eval and checkpoint.
        last_log_time, last_log_step = time.perf_counter(), step
      if preempted:
        logging.warning('preempted: checkpoint of step %d saved; exiting', step)
        progress.write(f'preempted at step {step}: checkpoint saved, exiting cleanly')
        break
  finally:
    ckpt.wait()
    ckpt.close()
    preemption.close()
    profiler.close()
    progress.close()

  summary = {
      'final': dict(eval_metrics),
      'best': best,
      'steps': step,
      'wall_time_s': time.perf_counter() - t0,
      'preempted': step < total,
  }
  if main:
    write_json(summary_path, summary)
    for path in importing_plots.result().write_plots(workdir):
      writer.write_image(f'plots/{Path(path).stem}', step, path)
    print(format_end_summary(summary), flush=True)
  writer.close()
  return summary
