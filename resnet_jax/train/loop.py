"""The training loop: set-up, the step loop, periodic eval, logging and checkpoints.

Side effects live here (files, logging, signals); the steps it calls are pure. The loop never
waits on the device except where it must read a number: at logging, eval and checkpoint time.
"""

import concurrent.futures
import copy
import dataclasses
import functools
import importlib
import itertools
import json
import math
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from resnet_jax import data, models, parallel, profiling, runtime
from resnet_jax.checkpoint import (CHECKPOINT_DIR, Checkpointer, PreemptionWatcher,
                                   check_shared_directory, is_better, write_json)
from resnet_jax.config_base import saved_config
from resnet_jax.models.summary import count_params
from resnet_jax.progress import Progress, format_end_summary, format_start_summary
from resnet_jax.train import distill, mixing, optim
from resnet_jax.train.state import TrainState, create_train_state, eval_variables, live_variables
from resnet_jax.train.steps import ema_batch_statistics, eval_step, train_step
from resnet_jax.writers import MetricWriter


EVAL_METRICS = ('loss', 'top1', 'top5')   # each as eval/<m>, and eval/live_<m> with an EMA


def eval_metric_names(config: ml_collections.ConfigDict) -> list[str]:
  """The metrics an eval of this config reports (`Trainer.evaluate`)."""
  prefixes = ['eval/', 'eval/live_'] if config.optimizer.ema_decay > 0 else ['eval/']
  return [prefix + m for prefix in prefixes for m in EVAL_METRICS]


def check_periods(config: ml_collections.ConfigDict) -> None:
  """Refuses periods and an EMA decay that the loop cannot use, naming the key."""
  if config.log_every_steps < 1:
    raise ValueError(f'log_every_steps={config.log_every_steps} must be at least 1')
  for key in ('eval_every_steps', 'checkpoint_every_steps'):
    if config[key] < 0:
      raise ValueError(f'{key}={config[key]} must be 0 (every epoch) or more')
  if not 0 <= config.optimizer.ema_decay < 1:
    raise ValueError(f'optimizer.ema_decay={config.optimizer.ema_decay} must be in [0, 1)')


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or infinite; the message names the step."""


def create_model_from_config(config: ml_collections.ConfigDict, num_classes: int,
                             bn_momentum: float | None = None):
  """The model of `config`; `bn_momentum` overrides `config.model.bn_momentum`."""
  m = config.model
  return models.create_model(
      m.name, num_classes=num_classes, shortcut=m.shortcut or None, residual=m.residual,
      variant=m.variant, zero_init_residual=m.zero_init_residual, width=m.width or None,
      bn_momentum=m.bn_momentum if bn_momentum is None else bn_momentum,
      bn_epsilon=m.bn_epsilon, bn_group_size=m.bn_group_size or None, dtype=config.dtype)


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  if config.num_steps > 0:
    return int(config.num_steps)
  return int(math.ceil(config.num_epochs * steps_per_epoch))


class BoundStep:
  """A jitted step with its trailing argument bound (the teacher's variables, or None): called
  and lowered as a step of (state, batch)."""

  def __init__(self, jitted, bound: Any):
    self.jitted, self.bound = jitted, bound

  def __call__(self, *args):
    return self.jitted(*args, self.bound)

  def lower(self, *args):
    return self.jitted.lower(*args, self.bound)


class Trainer:
  """What is built once per run: model, optimizer and the steps compiled over the mesh."""

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *,
               num_classes: int, image_shape: tuple[int, ...], steps_per_epoch: int,
               teacher: 'TrainedModel | None' = None):
    parallel.check_batch_size(config.batch_size, mesh)
    parallel.check_batch_size(config.eval_batch_size, mesh, 'eval_batch_size')
    if teacher is not None and not config.distill.teacher:
      raise ValueError('a teacher was given, but distill.teacher is empty')
    self.config = config
    self.mesh = mesh
    self.num_classes = num_classes
    self.model = create_model_from_config(config, num_classes)
    self.image_shape = tuple(image_shape)
    self.steps_per_epoch = steps_per_epoch
    self.total_steps = total_train_steps(config, steps_per_epoch)
    self.schedule = optim.create_schedule(config, steps_per_epoch, self.total_steps)
    self.tx = optim.create_optimizer(config, self.schedule)
    mixing.check_mixing(config.data)
    check_periods(config)
    if config.best_metric not in eval_metric_names(config):
      raise ValueError(f'best_metric={config.best_metric!r} is not a metric of this run\'s evals; '
                       f'valid: {", ".join(eval_metric_names(config))}')

    init = functools.partial(create_train_state, self.model, self.tx,
                             image_shape=self.image_shape, ema=config.optimizer.ema_decay > 0)
    abstract = jax.eval_shape(init, jax.random.PRNGKey(config.seed))
    self.state_sharding = jax.tree.map(lambda _: parallel.replicated(mesh), abstract)
    # Shapes, dtypes and shardings of the state: a restore template and a compile input.
    self.abstract_state = jax.tree.map(
        lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
        abstract, self.state_sharding)
    self._init = jax.jit(init)   # PRNG key -> state, on the device of the key
    batch = parallel.batch_sharding(mesh)
    self.teacher = teacher
    # The teacher's variables are an argument of the compiled step (not constants in it).
    teacher_variables = (jax.device_put(teacher.variables, parallel.replicated(mesh))
                         if teacher else None)
    self.train_step = BoundStep(jax.jit(
        functools.partial(train_step, model=self.model, tx=self.tx, schedule=self.schedule,
                          config=config, teacher_model=teacher.model if teacher else None),
        in_shardings=(self.state_sharding, batch, parallel.replicated(mesh)),
        out_shardings=(self.state_sharding, parallel.replicated(mesh)),
        donate_argnums=0), teacher_variables)
    self.eval_step = jax.jit(
        functools.partial(eval_step, model=self.model, config=config),
        in_shardings=(parallel.replicated(mesh), batch),
        out_shardings=parallel.replicated(mesh))
    self.ema_batch_statistics = jax.jit(
        functools.partial(ema_batch_statistics, config=config,
                          stats_model=create_model_from_config(config, num_classes, 0.0)),
        in_shardings=(self.state_sharding, batch), out_shardings=parallel.replicated(mesh))

  def init_state(self) -> TrainState:
    """The initial state, computed on the host's CPU (where there is one) and placed on the mesh.

    XLA compiles the initialisation, a chain of random-number kernels per parameter, about 3x
    faster for the CPU than for a GPU (2.3 s against 7.7 s for a ResNet-20 on an H200 host:
    benchmarks/startup.py); the values are the same (threefry is exact integer arithmetic).
    """
    try:
      host = jax.local_devices(backend='cpu')[0]
    except RuntimeError:   # JAX_PLATFORMS without cpu
      host = jax.local_devices()[0]
    with jax.default_device(host):
      state = jax.device_get(self._init(jax.random.PRNGKey(self.config.seed)))
    # A copy per device: a device buffer may alias the host array it came from (zero-copy on
    # CPUs), and the train step donates the state's buffers (the EMA starts as the params).
    return jax.tree.map(
        lambda x, sharding: jax.make_array_from_callback(x.shape, sharding,
                                                         lambda i: np.array(x[i])),
        state, self.state_sharding)

  def _abstract_batch(self, batch_size: int, *, mask: bool) -> dict[str, jax.ShapeDtypeStruct]:
    """The batches every input gives: uint8 images of `image_shape`, int32 labels (and the
    bool mask of eval batches), sharded over the mesh."""
    sharding = parallel.batch_sharding(self.mesh)
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    batch = {'image': spec((batch_size, *self.image_shape), jnp.uint8),
             'label': spec((batch_size,), jnp.int32)}
    return dict(batch, mask=spec((batch_size,), jnp.bool_)) if mask else batch

  def compile_steps(self, pool: concurrent.futures.Executor) -> list[concurrent.futures.Future]:
    """Starts compiling the train step and the eval step in `pool`, for the batches every input
    gives (their first calls reuse them); returns the futures of the two compiles.

    The train step is traced and lowered here, before anything else starts: tracing is Python
    and holds the GIL, and it begins the longest chain of start-up, whose rest (XLA's compile)
    runs without the GIL beside everything else.
    """
    lowered = self.train_step.lower(self.abstract_state,
                                    self._abstract_batch(self.config.batch_size, mask=False))
    variables = {'params': self.abstract_state.params,
                 'batch_stats': self.abstract_state.batch_stats}
    eval_batch = self._abstract_batch(self.config.eval_batch_size, mask=True)
    return [pool.submit(lowered.compile),
            pool.submit(lambda: self.eval_step.lower(variables, eval_batch).compile())]

  def evaluate(self, state: TrainState, eval_input: Iterable) -> dict[str, float]:
    """One pass over the eval split; every example counted exactly once.

    `eval/*` are the metrics of the weights evaluation uses (the EMA ones when there is an
    EMA); with an EMA, `eval/live_*` are those of the live weights, on the same pass.
    """
    evaluated = {'eval/': eval_variables(state)}
    if state.ema_params is not None:
      evaluated['eval/live_'] = live_variables(state)
    sums = {prefix: None for prefix in evaluated}
    for batch in eval_input:
      for prefix, variables in evaluated.items():
        # The EMA and live weights' steps are independent programs: on a CPU mesh they must not
        # overlap (parallel.finish_on_cpu_meshes).
        out = parallel.finish_on_cpu_meshes(self.eval_step(variables, batch), self.mesh)
        sums[prefix] = out if sums[prefix] is None else jax.tree.map(jnp.add, sums[prefix], out)
    metrics = {}
    for prefix, total in jax.device_get(sums).items():
      n = float(total['count'])
      metrics.update({prefix + k: float(total[k]) / n for k in EVAL_METRICS})
    return metrics


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
    stats = t.ema_batch_statistics(state, batch)
    self.sums = stats if self.sums is None else jax.tree.map(jnp.add, self.sums, stats)
    self.count += 1

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


def create_trainer(config: ml_collections.ConfigDict, *, train: bool = True):
  """The mesh, the inputs (train only if `train`) and the trainer for a config, without its
  distillation teacher (`with_teacher`)."""
  mesh = parallel.create_mesh()
  eval_input = data.create_input(config, mesh, train=False)
  train_input = data.create_input(config, mesh, train=True) if train else None
  trainer = Trainer(config, mesh, num_classes=eval_input.info.num_classes,
                    image_shape=tuple(eval_input.info.image_shape),
                    steps_per_epoch=train_input.steps_per_epoch if train else 1)
  return trainer, train_input, eval_input


def with_teacher(trainer: Trainer) -> Trainer:
  """`trainer` with its config's distillation teacher loaded (itself where there is none)."""
  teacher = load_teacher(trainer.config, num_classes=trainer.num_classes,
                         channels=trainer.image_shape[-1])
  if teacher is None:
    return trainer
  return Trainer(trainer.config, trainer.mesh, num_classes=trainer.num_classes,
                 image_shape=trainer.image_shape, steps_per_epoch=trainer.steps_per_epoch,
                 teacher=teacher)


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """A finished (or running) training run's model and its eval variables, on the host."""
  config: ml_collections.ConfigDict   # the run's config.json, on this version's schema
  model: Any
  variables: dict[str, Any]           # the EMA weights where the run kept an EMA
  step: int
  num_classes: int
  channels: int


def restore_trained(workdir: str | Path, checkpoint: str = 'latest') -> TrainedModel:
  """The model of a training workdir at its latest or best checkpoint; FileNotFoundError naming
  what is missing where `workdir` is not a run with a checkpoint."""
  workdir = Path(workdir)
  config_file = workdir / 'config.json'
  if not config_file.is_file():
    raise FileNotFoundError(f'{config_file} not found: {workdir} is not a training run directory')
  if not (workdir / CHECKPOINT_DIR).is_dir():
    raise FileNotFoundError(f'{workdir / CHECKPOINT_DIR} not found: the run has no checkpoint')
  config = saved_config(json.loads(config_file.read_text()), source=str(config_file))
  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints,
                      keep_best=config.keep_best_checkpoints, best_metric=config.best_metric)
  try:
    step = ckpt.chosen_step(checkpoint)
    params = ckpt.saved_arrays(step)['params']
    num_classes, channels = (params['head']['kernel'].shape[-1],
                             params['stem_conv']['kernel'].shape[-2])
    size = config.data.image_size
    # On one local device (each process of a multi-process job reads its own copy), whose
    # batches any batch size fits: the run's batch sizes need not divide this host's devices.
    one_device = copy.deepcopy(config)
    one_device.update(batch_size=1, eval_batch_size=1)
    trainer = Trainer(one_device, parallel.local_mesh(1), num_classes=num_classes,
                      image_shape=(size, size, channels), steps_per_epoch=1)
    state, _ = ckpt.restore(trainer.abstract_state, config, step)
  finally:
    ckpt.close()
  return TrainedModel(config, trainer.model, jax.device_get(eval_variables(state)), step,
                      num_classes, channels)


def load_teacher(config: ml_collections.ConfigDict, *, num_classes: int,
                 channels: int) -> TrainedModel | None:
  """The distillation teacher of `config` (`distill.teacher`), checked against the data it is to
  teach on; None where the config has none."""
  if not config.distill.teacher:
    return None
  distill.check_distill(config)
  teacher = restore_trained(config.distill.teacher, config.distill.checkpoint)
  distill.check_teacher(config, teacher.config, num_classes=num_classes,
                        teacher_classes=teacher.num_classes, channels=channels,
                        teacher_channels=teacher.channels)
  logging.info('distilling from %s (step %d, %s parameters)', config.distill.teacher,
               teacher.step, f'{count_params(teacher.variables["params"]):,}')
  return teacher


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


def _checked(pending: list[tuple[int, dict]]) -> list[tuple[int, dict]]:
  """The pending steps' metrics fetched to the host; raises on the first non-finite loss."""
  host = jax.device_get(pending)
  for step, metrics in host:
    if not np.isfinite(metrics['loss']):
      raise NonFiniteLossError(
          f'loss is {metrics["loss"]} at step {step}; stopped without saving: the latest '
          'checkpoint in the workdir (its losses were all checked) is the last good state. '
          'Lower the learning rate or check the data.')
  return host


def _train_scalars(pending: list[tuple[int, dict]]) -> dict[str, float]:
  """The checked metrics of the steps since the last log, averaged (the last learning rate)."""
  host = [m for _, m in _checked(pending)]
  return {'train/loss': float(np.mean([m['loss'] for m in host])),
          'train/top1': float(np.mean([m['top1'] for m in host])),
          'lr': float(host[-1]['lr'])}


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
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  check_shared_directory(workdir)
  main = parallel.is_main_process()
  trainer, train_input, eval_input = create_trainer(config)
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
    logging.info('%s finished at step %d: nothing to do', workdir, int(state.step))
    return json.loads(summary_path.read_text())
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
  profiler = profiling.StepProfiler(workdir, tuple(config.profile_steps))
  preemption = PreemptionWatcher()
  ema_statistics = EmaStatistics(trainer)

  pending: list[tuple[int, dict]] = []
  eval_metrics: dict[str, float] = {}
  best: dict[str, float] = ckpt.best() or {}   # evals before a resume count too
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
        scalars = _train_scalars(pending)
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
        pending = _checked(pending)
        if evaluated:
          state = ema_statistics.recomputed(state)
          eval_metrics = trainer.evaluate(state, eval_input)
          writer.write_scalars(step, eval_metrics, epoch=step / trainer.steps_per_epoch)
          progress.write(f'step {step}: '
                         + ', '.join(f'{k} {v:.4f}' for k, v in eval_metrics.items()))
          if not best or is_better(eval_metrics, best, config.best_metric):
            best = dict(eval_metrics, step=step)
        ckpt.save(step, state, train_input.get_state(), config,
                  eval_metrics if evaluated else None)
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
