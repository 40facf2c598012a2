"""What a run builds once: the model, the optimizer and the steps compiled over the mesh."""

import concurrent.futures
import functools
import math
from typing import TYPE_CHECKING, Any, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from resnet_jax import data, models, parallel
from resnet_jax.train import mixing, optim
from resnet_jax.train.state import TrainState, create_train_state, eval_variables, live_variables
from resnet_jax.train.steps import ema_batch_statistics, eval_step, train_step

if TYPE_CHECKING:
  from resnet_jax.train.restore import TrainedModel

# Each as eval/<m>, and eval/live_<m> with an EMA. class_mean_top1: the mean over the classes of
# their top-1 (balanced accuracy), the figure that counts where classes are unequal in size.
EVAL_METRICS = ('loss', 'top1', 'top5', 'class_mean_top1')


def eval_metrics(sums: dict[str, Any]) -> dict[str, float]:
  """EVAL_METRICS of one eval pass from `eval_step`'s summed outputs (on the host); the class
  mean leaves out the classes the split lacks."""
  n = float(sums['count'])
  present = sums['class_count'] > 0
  return {'loss': float(sums['loss']) / n, 'top1': float(sums['top1']) / n,
          'top5': float(sums['top5']) / n,
          'class_mean_top1': float(np.mean(sums['class_top1'][present]
                                           / sums['class_count'][present]))}


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


def create_model_from_config(config: ml_collections.ConfigDict, num_classes: int):
  """The model of `config`."""
  m = config.model
  return models.create_model(
      m.name, num_classes=num_classes, shortcut=m.shortcut or None, residual=m.residual,
      variant=m.variant, zero_init_residual=m.zero_init_residual, width=m.width or None,
      bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon, bn_group_size=m.bn_group_size or None,
      drop_path_rate=m.drop_path_rate, dtype=config.dtype)


def total_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """num_steps, or num_epochs in steps; refuses a config that sets both or neither."""
  steps, epochs = config.num_steps, config.num_epochs
  if steps > 0 and epochs > 0:
    raise ValueError(f'num_steps={steps} and num_epochs={epochs} both set the run\'s length: set '
                     'the other to 0 (--config.num_steps=0 to train by epochs)')
  if steps < 0 or epochs < 0 or not (steps or epochs):
    raise ValueError(f'num_steps={steps}, num_epochs={epochs}: one of them must be positive (the '
                     'run\'s length), the other 0')
  if steps > 0:
    return int(steps)
  return int(math.ceil(epochs * steps_per_epoch))


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
  """What is built once per run: model, optimizer and the steps compiled over the mesh.

  `steps_per_epoch` None: a trainer to evaluate or restore a run, not to train it; its optimizer
  gives the state's shapes (which no schedule changes) under a constant rate, so a schedule
  that only the run's own epoch length makes valid is not checked against a made-up one.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, *,
               num_classes: int, image_shape: tuple[int, ...], steps_per_epoch: int | None,
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
    self.steps_per_epoch = steps_per_epoch or 1
    self.total_steps = total_train_steps(config, self.steps_per_epoch)
    self.schedule = (optim.create_schedule(config, steps_per_epoch, self.total_steps)
                     if steps_per_epoch else optax.constant_schedule(0.0))
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
                          stats_model=self.model.clone(bn_momentum=0.0, drop_path_rate=0.0)),
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
    return {prefix + k: v for prefix, total in jax.device_get(sums).items()
            for k, v in eval_metrics(total).items()}


def create_trainer(config: ml_collections.ConfigDict, *, train: bool = True):
  """The mesh, the inputs (train only if `train`) and the trainer for a config, without its
  distillation teacher (`train.restore.with_teacher` adds it)."""
  mesh = parallel.create_mesh()
  eval_input = data.create_input(config, mesh, train=False)
  train_input = data.create_input(config, mesh, train=True) if train else None
  trainer = Trainer(config, mesh, num_classes=eval_input.info.num_classes,
                    image_shape=tuple(eval_input.info.image_shape),
                    steps_per_epoch=train_input.steps_per_epoch if train else None)
  return trainer, train_input, eval_input
