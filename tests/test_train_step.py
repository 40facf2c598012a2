"""The step: data parallelism and BN synchronisation, NaN guard, optimizer and schedules."""

import concurrent.futures
import json
import logging
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import parallel
from resnet_jax.config_base import base_config
from resnet_jax.data.device_ops import prepare_images
from resnet_jax.data.inputs import TrainInput
from resnet_jax.train import optim
from resnet_jax.train.loop import EmaStatistics, train_and_evaluate
from resnet_jax.train.trainer import Trainer
from resnet_jax.train.state import eval_variables
from resnet_jax.train.steps import cross_entropy, topk_correct
from tests.helpers import fake_config

IMAGE_SHAPE = (16, 16, 3)


def tiny_config(**model):
  c = base_config()
  c.model.name = 'small_plain'
  c.model.width = 8
  c.model.update(model)
  c.batch_size = 32
  c.eval_batch_size = 32
  c.data.mean = (0.5,)
  c.data.std = (0.25,)
  c.optimizer.lr = 0.1
  c.schedule.name = 'constant'
  return c


def random_batch(n=32, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (n, *IMAGE_SHAPE), dtype=np.uint8),
          'label': rng.integers(0, 10, (n,), dtype=np.int32)}


def one_step(config, num_devices, batch):
  mesh = parallel.create_mesh(num_devices)
  trainer = Trainer(config, mesh, num_classes=10, image_shape=IMAGE_SHAPE, steps_per_epoch=10)
  state = trainer.init_state()
  global_batch = jax.device_put(batch, parallel.batch_sharding(mesh))
  state, metrics = trainer.train_step(state, global_batch)
  return jax.device_get(state), jax.device_get(metrics)


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def test_eight_devices_equal_one_device(devices):
  """Data parallelism and synchronised BN: 8 devices compute exactly the 1-device step."""
  batch = random_batch()
  config = tiny_config()
  s8, m8 = one_step(config, 8, batch)
  s1, m1 = one_step(config, 1, batch)
  assert int(s8.step) == 1
  np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
  assert_trees_close(s8.params, s1.params)
  assert_trees_close(s8.batch_stats, s1.batch_stats)

  # Per-device (ghost) BN over groups of 4 = the 8 per-device batches gives other statistics.
  ghost, _ = one_step(tiny_config(bn_group_size=4), 8, batch)
  means = [np.asarray(x) for x in jax.tree.leaves(ghost.batch_stats)]
  ref = [np.asarray(x) for x in jax.tree.leaves(s8.batch_stats)]
  assert any(not np.allclose(a, b) for a, b in zip(means, ref))


def test_nonfinite_loss_leaves_state_unchanged(devices):
  config = tiny_config()
  config.data.std = (0.0,)   # division by zero: infinite inputs, NaN loss
  mesh = parallel.create_mesh(8)
  trainer = Trainer(config, mesh, num_classes=10, image_shape=IMAGE_SHAPE, steps_per_epoch=10)
  state = trainer.init_state()
  before = jax.device_get(state)
  state, metrics = trainer.train_step(state, jax.device_put(random_batch(),
                                                            parallel.batch_sharding(mesh)))
  assert not np.isfinite(float(metrics['loss']))
  after = jax.device_get(state)
  assert int(after.step) == 0
  assert_trees_close(after.params, before.params, rtol=0, atol=0)


def test_ema_averages_params_and_bn_statistics_and_evaluation_uses_both(devices):
  """EMA: e' = d e + (1 - d) v for the params and the BN statistics; eval reads the EMA pair."""
  config = tiny_config()
  config.optimizer.ema_decay = d = 0.75
  mesh = parallel.create_mesh(8)
  trainer = Trainer(config, mesh, num_classes=10, image_shape=IMAGE_SHAPE, steps_per_epoch=10)
  state = trainer.init_state()
  before = jax.device_get(state)
  state, _ = trainer.train_step(state, jax.device_put(random_batch(), parallel.batch_sharding(mesh)))
  after = jax.device_get(state)
  for ema, old, new in [(after.ema_params, before.params, after.params),
                        (after.ema_batch_stats, before.batch_stats, after.batch_stats)]:
    expected = jax.tree.map(lambda o, n: d * o + (1 - d) * n, old, new)
    assert_trees_close(ema, expected)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(after.ema_batch_stats),
                                                   jax.tree.leaves(after.batch_stats)))
  variables = eval_variables(after)
  assert variables['params'] is after.ema_params
  assert variables['batch_stats'] is after.ema_batch_stats


def trained_on_eight_devices(steps: int, **optimizer):
  """(trainer, batch sharding, state) of `tiny_config` with `optimizer` overrides after `steps`
  steps on random batches over 8 devices."""
  config = tiny_config()
  config.optimizer.update(optimizer)
  mesh = parallel.create_mesh(8)
  trainer = Trainer(config, mesh, num_classes=10, image_shape=IMAGE_SHAPE, steps_per_epoch=10)
  sharding = parallel.batch_sharding(mesh)
  state = trainer.init_state()
  for seed in range(steps):
    state, _ = trainer.train_step(state, jax.device_put(random_batch(seed=seed), sharding))
  return trainer, sharding, state


def test_with_recomputed_ema_statistics_the_step_leaves_them_as_they_are(devices):
  """With optimizer.ema_bn_batches the EMA statistics are recomputed before each eval; the
  train step keeps them (a checkpoint between evals holds the recomputed ones, not a blend with
  the live weights' statistics), while it still averages the params."""
  trainer, _, state = trained_on_eight_devices(steps=0, ema_decay=0.75, ema_bn_batches=2)
  marked = jax.tree.map(lambda s: s + 3.0, state.ema_batch_stats)   # as if recomputed
  before = jax.device_get(state.replace(ema_batch_stats=marked))
  batch = jax.device_put(random_batch(), parallel.batch_sharding(trainer.mesh))
  after = jax.device_get(trainer.train_step(state.replace(ema_batch_stats=marked), batch)[0])
  assert_trees_close(after.ema_batch_stats, before.ema_batch_stats, rtol=0, atol=0)
  assert not np.allclose(jax.tree.leaves(after.batch_stats)[0],
                         jax.tree.leaves(before.batch_stats)[0])
  assert_trees_close(after.ema_params,
                     jax.tree.map(lambda o, n: 0.75 * o + 0.25 * n, before.params, after.params))


def test_evaluation_with_an_ema_reports_the_ema_and_the_live_weights(devices):
  """With an EMA, eval/* are the EMA weights' metrics and eval/live_* the live weights'."""
  trainer, sharding, state = trained_on_eight_devices(steps=3, ema_decay=0.5)
  eval_batch = dict(random_batch(seed=9), mask=np.ones(32, bool))
  eval_input = [jax.device_put(eval_batch, sharding)]

  both = trainer.evaluate(state, eval_input)
  live_only = trainer.evaluate(state.replace(ema_params=None, ema_batch_stats=None), eval_input)
  ema_as_live = trainer.evaluate(
      state.replace(params=state.ema_params, batch_stats=state.ema_batch_stats,
                    ema_params=None, ema_batch_stats=None), eval_input)
  assert set(live_only) == {'eval/loss', 'eval/top1', 'eval/top5', 'eval/class_mean_top1'}
  for k in ('loss', 'top1', 'top5', 'class_mean_top1'):
    assert both[f'eval/live_{k}'] == pytest.approx(live_only[f'eval/{k}'], rel=1e-6)
    assert both[f'eval/{k}'] == pytest.approx(ema_as_live[f'eval/{k}'], rel=1e-6)
  assert both['eval/loss'] != pytest.approx(both['eval/live_loss'], rel=1e-4)


def test_eval_counts_top1_per_class_and_averages_the_classes_present():
  from resnet_jax.train.steps import eval_step
  from resnet_jax.train.trainer import eval_metrics
  from tests.helpers import fake_config

  class FixedLogits:   # a model whose logits are its variables
    def apply(self, variables, images, train):
      return variables['logits']

  labels = np.array([0, 0, 1, 1, 2])
  predicted = np.array([0, 1, 1, 1, 0])   # class 0: 1 of 2, class 1: 2 of 2
  batch = {'image': np.zeros((5, 16, 16, 3), np.uint8), 'label': labels,
           'mask': np.array([True] * 4 + [False])}   # the class-2 example is padding
  out = eval_step({'logits': jnp.eye(10)[predicted]}, batch, model=FixedLogits(),
                  config=fake_config())
  np.testing.assert_array_equal(out['class_top1'], [1, 2] + [0] * 8)
  np.testing.assert_array_equal(out['class_count'], [2, 2] + [0] * 8)
  metrics = eval_metrics(jax.device_get(out))
  assert metrics['top1'] == 3 / 4 and metrics['class_mean_top1'] == (1 / 2 + 2 / 2) / 2


def test_programs_on_a_cpu_mesh_finish_before_the_next_one_starts(devices):
  """finish_on_cpu_meshes waits on an 8-device CPU mesh (the EMA and live eval steps overlapped
  there and XLA's CPU runtime deadlocked in an all-reduce)."""
  mesh = parallel.create_mesh(8)
  x = jax.device_put(jnp.ones((1024, 1024), jnp.float32), parallel.replicated(mesh))
  y = parallel.finish_on_cpu_meshes(jax.jit(lambda a: sum(a @ a * i for i in range(8)))(x), mesh)
  assert y.is_ready()
  np.testing.assert_allclose(np.asarray(y)[0, 0], 1024 * 28)


def test_ema_bn_statistics_are_computed_before_the_train_step_is_dispatched(devices):
  """On a CPU mesh EmaStatistics.observe returns with its all-reduce done: consecutive EMA
  statistics steps, or one and the train step, overlapped and deadlocked XLA's CPU runtime."""
  trainer, sharding, state = trained_on_eight_devices(steps=0, ema_decay=0.5, ema_bn_batches=3)
  ema_statistics = EmaStatistics(trainer)
  ema_statistics.observe(9, state, jax.device_put(random_batch(seed=1), sharding))
  assert ema_statistics.count == 1
  assert all(leaf.is_ready() for leaf in jax.tree.leaves(ema_statistics.sums))


def test_ema_bn_statistics_recomputed_for_shrunken_weights_match_the_live_weights(devices):
  """Weights averaged while they turn are shorter than the live ones. With BN statistics
  recomputed on the last training batches (optimizer.ema_bn_batches), conv kernels at half
  length give the live net's outputs (BN is scale-invariant); with the live statistics they do
  not."""
  trainer, sharding, state = trained_on_eight_devices(steps=2, ema_decay=0.5, ema_bn_batches=3)
  config = trainer.config
  half = jax.tree.map(lambda p: p * 0.5 if p.ndim == 4 else p, state.params)   # conv kernels
  shrunk = state.replace(ema_params=half, ema_batch_stats=state.batch_stats)
  live = state.replace(ema_params=state.params)

  ema_statistics = EmaStatistics(trainer)
  ema_statistics.observe(6, shrunk, jax.device_put(random_batch(seed=2), sharding))  # eval at 10
  assert ema_statistics.count == 0 and ema_statistics.recomputed(shrunk) is shrunk
  recomputed = {}
  for name, s in (('shrunk', shrunk), ('live', live)):
    for step, seed in zip((7, 8, 9), (3, 4, 5)):
      ema_statistics.observe(step, s, jax.device_put(random_batch(seed=seed), sharding))
    assert ema_statistics.count == 3
    recomputed[name] = ema_statistics.recomputed(s)
    assert ema_statistics.count == 0

  images = prepare_images(random_batch(seed=9)['image'], None, train=False,
                          data_config=config.data, dtype=jnp.float32)
  logits = lambda params, stats: trainer.model.apply(
      {'params': params, 'batch_stats': stats}, images, train=False)
  reference = logits(state.params, recomputed['live'].ema_batch_stats)
  np.testing.assert_allclose(logits(half, recomputed['shrunk'].ema_batch_stats), reference,
                             rtol=1e-3, atol=1e-3)
  assert not np.allclose(logits(half, state.batch_stats), reference, rtol=0.1, atol=0.1)
  first_mean = lambda s: jax.tree.leaves(s.ema_batch_stats)[0]   # a BN layer's mean or var
  assert not np.allclose(first_mean(recomputed['shrunk']), first_mean(recomputed['live']))


def test_stochastic_depth_in_the_step_is_the_same_on_eight_devices_and_one(devices):
  """The branches dropped depend on the global batch, not on how it is sharded; they change
  the step."""
  batch = random_batch()
  config = tiny_config(name='small_resnet', drop_path_rate=0.5)
  s8, m8 = one_step(config, 8, batch)
  s1, m1 = one_step(config, 1, batch)
  np.testing.assert_allclose(m8['loss'], m1['loss'], rtol=1e-5)
  assert_trees_close(s8.params, s1.params)
  _, whole = one_step(tiny_config(name='small_resnet'), 1, batch)
  assert not np.isclose(whole['loss'], m1['loss'], rtol=1e-3)


def test_recomputed_ema_bn_statistics_are_those_of_the_whole_net(devices):
  """With stochastic depth the EMA weights' BN statistics (optimizer.ema_bn_batches) are
  computed without dropped branches, as evaluation runs the net."""
  mesh = parallel.create_mesh(8)
  statistics = {}
  for rate in (0.5, 0.0):
    config = tiny_config(name='small_resnet', drop_path_rate=rate)
    config.optimizer.ema_decay = 0.5
    trainer = Trainer(config, mesh, num_classes=10, image_shape=IMAGE_SHAPE, steps_per_epoch=10)
    state = trainer.init_state()
    statistics[rate] = jax.device_get(trainer.ema_batch_statistics(
        state, jax.device_put(random_batch(), parallel.batch_sharding(mesh))))
  assert_trees_close(statistics[0.5], statistics[0.0])


def test_ema_bn_batches_needs_an_ema():
  config = tiny_config()
  config.optimizer.ema_bn_batches = 5
  with pytest.raises(ValueError, match='ema_bn_batches=5 needs an EMA'):
    optim.create_optimizer(config, optax.constant_schedule(0.1))


def test_sam_step_uses_the_gradient_at_the_perturbed_weights(devices):
  """SAM: the update is SGD's with the gradient at w + rho g / |g|, g the gradient at w."""
  config = tiny_config()
  config.optimizer.update(momentum=0.0, weight_decay=0.0, sam_rho=0.5)
  mesh = parallel.create_mesh(8)
  trainer = Trainer(config, mesh, num_classes=10, image_shape=IMAGE_SHAPE, steps_per_epoch=10)
  state = trainer.init_state()
  before = jax.device_get(state)
  batch = random_batch()
  state, metrics = trainer.train_step(state, jax.device_put(batch, parallel.batch_sharding(mesh)))
  after = jax.device_get(state)

  images = prepare_images(batch['image'], None, train=False, data_config=config.data,
                          dtype=np.float32)
  def loss(params):
    logits, _ = trainer.model.apply({'params': params, 'batch_stats': before.batch_stats},
                                    images, train=True, mutable=['batch_stats'])
    return jnp.mean(cross_entropy(logits, batch['label'], 0.0))
  g = jax.grad(loss)(before.params)
  scale = 0.5 / optax.tree.norm(g)
  g_sam = jax.grad(loss)(jax.tree.map(lambda p, d: p + scale * d, before.params, g))
  assert_trees_close(after.params, jax.tree.map(lambda p, d: p - 0.1 / 8 * d, before.params, g_sam))
  assert float(metrics['loss']) == pytest.approx(float(loss(before.params)), rel=1e-5)
  # Not plain SGD: the perturbation changes the step.
  sgd = jax.tree.map(lambda p, d: p - 0.1 / 8 * d, before.params, g)
  assert any(not np.allclose(a, b, atol=1e-6) for a, b in zip(jax.tree.leaves(after.params),
                                                              jax.tree.leaves(sgd)))


def test_negative_sam_rho_is_an_error():
  c = tiny_config()
  c.optimizer.sam_rho = -0.05
  with pytest.raises(ValueError, match='optimizer.sam_rho'):
    optim.create_optimizer(c, optax.constant_schedule(0.1))


def test_linear_scaling_rule():
  c = tiny_config()
  c.optimizer.lr, c.optimizer.lr_batch_size, c.batch_size = 0.1, 256, 1024
  assert optim.peak_learning_rate(c) == pytest.approx(0.4)


@pytest.mark.parametrize('unit,boundaries,expected', [
    ('steps', (30, 60), {0: 0.1, 29: 0.1, 30: 0.01, 59: 0.01, 60: 0.001}),
    ('epochs', (3, 6), {0: 0.1, 29: 0.1, 30: 0.01, 60: 0.001}),
    ('fraction', (0.5, 0.75), {0: 0.1, 49: 0.1, 50: 0.01, 75: 0.001}),
])
def test_multistep_schedule(unit, boundaries, expected):
  c = tiny_config()
  c.batch_size = c.optimizer.lr_batch_size = 256
  c.schedule.update(name='multistep', unit=unit, boundaries=boundaries)
  schedule = optim.create_schedule(c, steps_per_epoch=10, total_steps=100)
  for step, lr in expected.items():
    assert float(schedule(step)) == pytest.approx(lr), step


def test_multistep_boundaries_past_the_end_are_logged(caplog):
  c = tiny_config()
  c.schedule.update(name='multistep', unit='epochs', boundaries=(3, 30, 60))
  with caplog.at_level(logging.WARNING):
    optim.create_schedule(c, steps_per_epoch=10, total_steps=200)   # 20 epochs
  assert '[30, 60] (epochs) fall at or after the last step (200)' in caplog.text


def test_warmup_then_cosine():
  c = tiny_config()
  c.batch_size = c.optimizer.lr_batch_size = 256
  c.schedule.update(name='cosine', unit='steps', warmup=10)
  schedule = optim.create_schedule(c, steps_per_epoch=10, total_steps=110)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.05)
  assert float(schedule(10)) == pytest.approx(0.1)
  assert float(schedule(60)) == pytest.approx(0.05, rel=1e-3)
  assert float(schedule(110)) == pytest.approx(0.0, abs=1e-6)


def test_warmup_then_linear_decay_to_zero():
  c = tiny_config()
  c.batch_size = c.optimizer.lr_batch_size = 512
  c.optimizer.lr = 0.4
  c.schedule.update(name='linear', unit='epochs', warmup=1, boundaries=())
  schedule = optim.create_schedule(c, steps_per_epoch=10, total_steps=110)
  assert [float(schedule(s)) for s in (0, 5)] == pytest.approx([0.0, 0.2])
  assert [float(schedule(s)) for s in (10, 60, 110)] == pytest.approx([0.4, 0.2, 0.0], abs=1e-7)


def test_paper_constant_warmup():
  c = tiny_config()
  c.batch_size = c.optimizer.lr_batch_size = 128
  c.schedule.update(name='multistep', unit='steps', warmup=400, warmup_factor=0.1,
                    boundaries=(32000, 48000))
  schedule = optim.create_schedule(c, steps_per_epoch=390, total_steps=64000)
  assert float(schedule(0)) == pytest.approx(0.01)
  assert float(schedule(399)) == pytest.approx(0.01)
  assert float(schedule(400)) == pytest.approx(0.1)
  assert float(schedule(32000)) == pytest.approx(0.01)
  assert float(schedule(48000)) == pytest.approx(0.001)


def test_unknown_schedule_is_refused():
  c = tiny_config()
  c.schedule.name = 'exponential'
  with pytest.raises(ValueError, match='exponential'):
    optim.create_schedule(c, 10, 100)


@pytest.mark.parametrize('decoupled,nesterov,clip', [(False, False, 0.0), (True, False, 0.0),
                                                     (False, True, 0.0), (False, False, 0.2)])
def test_sgd_weight_decay_matches_hand_computation(decoupled, nesterov, clip):
  """Two steps of SGD momentum 0.9, lr 0.1, wd 0.01 (coupled or decoupled), plain or Nesterov,
  with or without gradient clipping, checked against the formulas (torch.optim.SGD's)."""
  c = tiny_config()
  c.batch_size = c.optimizer.lr_batch_size = 256
  c.optimizer.update(weight_decay=0.01, momentum=0.9, decoupled_weight_decay=decoupled,
                     nesterov=nesterov, grad_clip_norm=clip)
  tx = optim.create_optimizer(c, optax.constant_schedule(0.1))
  p = {'w': np.array([[1.0, -2.0]])}
  g = {'w': np.array([[0.5, 0.25]])}   # norm 0.56: clipped to 0.2 where asked
  opt_state = tx.init(p)
  params, m = p['w'], 0.0
  for _ in range(2):
    updates, opt_state = tx.update(g, opt_state, {'w': params})
    grad = g['w'] * (min(1.0, clip / np.linalg.norm(g['w'])) if clip else 1.0)
    if not decoupled:
      grad = grad + 0.01 * params
    m = 0.9 * m + grad
    step = grad + 0.9 * m if nesterov else m
    expected = params - 0.1 * (step + 0.01 * params if decoupled else step)
    params = params + updates['w']
    np.testing.assert_allclose(params, expected, rtol=1e-6)


def test_bn_and_bias_excluded_from_weight_decay():
  c = tiny_config()
  c.optimizer.update(weight_decay=0.5, momentum=0.0, decay_bn_and_bias=False)
  tx = optim.create_optimizer(c, optax.constant_schedule(1.0))
  params = {'kernel': np.ones((2, 2)), 'scale': np.ones((2,))}
  zeros = jax.tree.map(np.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates['kernel'], -0.5)
  np.testing.assert_allclose(updates['scale'], 0.0)


def test_small_resnet_learns_and_eval_counts_every_example(tmp_path, devices):
  """A few dozen steps on Fashion-MNIST (a generated stand-in where it is absent) lower the loss."""
  import os
  from resnet_jax.train.loop import train_and_evaluate
  from resnet_jax.writers import read_metrics
  from tests.helpers import fake_config, write_idx_dataset
  real = '/usr/share/datasets/fashion-mnist'
  data_dir = real if os.path.isdir(real) else write_idx_dataset(tmp_path / 'data', 2048, 300,
                                                                 learnable=True)
  c = fake_config(num_steps=40, batch_size=64, log_every_steps=5, eval_batch_size=104)
  c.data.update(source='idx', name='fashion_mnist', data_dir=str(data_dir), image_size=28,
                augment='none', mean=(0.3,), std=(0.3,), holdout=300)
  c.optimizer.lr_batch_size = 64
  summary = train_and_evaluate(c, tmp_path / 'run')
  losses = [m['train/loss'] for m in read_metrics(tmp_path / 'run') if 'train/loss' in m]
  assert losses[-1] < 0.8 * losses[0], losses
  # 300 held-out examples in batches of 104 (the last one padded): each counted once, so every
  # accuracy is a whole number of examples out of 300.
  n_correct = summary['final']['eval/top1'] * 300
  assert abs(n_correct - round(n_correct)) < 1e-3


def compiles_during(fn) -> list[str]:
  """The names of the programs that JAX compiled (or read from its cache) while `fn` ran."""
  names = []

  def listener(event, duration, **kwargs):
    if event == '/jax/core/compile/backend_compile_duration':
      names.append(kwargs.get('fun_name', '?'))
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    fn()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return names


def test_compiling_the_steps_ahead_leaves_nothing_to_compile_at_the_first_steps(devices):
  mesh = parallel.create_mesh(8)
  batch = jax.device_put(random_batch(), parallel.batch_sharding(mesh))

  def first_step(ahead: bool):
    trainer = Trainer(tiny_config(), mesh, num_classes=10, image_shape=IMAGE_SHAPE,
                      steps_per_epoch=10)
    if ahead:
      with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for compiled in trainer.compile_steps(pool):
          compiled.result()
    state = trainer.init_state()
    eval_batch = jax.device_put(dict(random_batch(), mask=np.ones(32, bool)),
                                parallel.batch_sharding(mesh))
    return compiles_during(
        lambda: trainer.evaluate(trainer.train_step(state, batch)[0], [eval_batch]))

  cold, ahead = first_step(ahead=False), first_step(ahead=True)
  for step in ('train_step', 'eval_step'):
    assert any(step in name for name in cold) and not any(step in name for name in ahead)


@pytest.mark.parametrize('source', ['fake', 'idx'])
def test_a_run_compiles_its_steps_once(tmp_path, devices, source):
  """The steps compiled ahead (for the batches every input gives) are the ones the loop runs."""
  from tests.helpers import write_idx_dataset
  config = fake_config(num_steps=2)
  if source == 'idx':
    config.data.update(source='idx', name='fashion_mnist', image_size=28, device_resident=True,
                       data_dir=str(write_idx_dataset(tmp_path / 'data', 256, 64)))
  names = compiles_during(lambda: train_and_evaluate(config, tmp_path / 'run'))
  for step in ('train_step', 'eval_step'):
    assert sum(step in name for name in names) == 1, names


def test_rerunning_a_finished_run_compiles_nothing_and_keeps_its_summary(tmp_path, devices):
  config = fake_config(num_steps=2)
  summary = train_and_evaluate(config, tmp_path)
  again = compiles_during(lambda: train_and_evaluate(config, tmp_path))
  assert not any('train_step' in name for name in again)
  assert json.loads((tmp_path / 'summary.json').read_text())['final'] == summary['final'] != {}


def test_a_finished_run_whose_summary_was_not_written_reports_its_final_eval(tmp_path, devices):
  """Stopped between its last checkpoint and its summary, a finished run resumed writes the
  summary with the final checkpoint's eval, and trains no further."""
  config = fake_config(num_steps=2)
  summary = train_and_evaluate(config, tmp_path)
  (tmp_path / 'summary.json').unlink()
  again = train_and_evaluate(config, tmp_path)
  assert again['steps'] == 2 and again['final'] != {}
  assert again['final'] == pytest.approx(summary['final'], rel=1e-6)
  assert json.loads((tmp_path / 'summary.json').read_text())['final'] == again['final']


def test_loop_stores_the_recomputed_ema_statistics_and_trains_as_without(tmp_path, devices):
  """With ema_bn_batches the loop trains exactly as without (same params, same EMA params) and
  its checkpoint holds recomputed EMA statistics in place of the averaged ones."""
  from resnet_jax.checkpoint import Checkpointer
  from resnet_jax.train.trainer import create_trainer
  states = {}
  for n in (0, 2):
    config = fake_config(num_steps=6, eval_every_steps=3)
    config.optimizer.update(ema_decay=0.8, ema_bn_batches=n)
    summary = train_and_evaluate(config, tmp_path / str(n))
    assert summary['steps'] == 6 and 'eval/live_top1' in summary['final']
    trainer, _, _ = create_trainer(config, train=False)
    states[n], _ = Checkpointer(tmp_path / str(n)).restore(trainer.abstract_state, config)
  assert_trees_close(states[2].params, states[0].params)
  assert_trees_close(states[2].ema_params, states[0].ema_params)
  assert not np.allclose(jax.tree.leaves(states[2].ema_batch_stats)[0],
                         jax.tree.leaves(states[0].ema_batch_stats)[0])


def test_the_first_batch_is_made_while_the_state_initialises(tmp_path, devices, monkeypatch):
  """Start-up overlaps the state's initialisation with making the first batch (whose functions
  compile then), besides compiling the steps: in another thread, while init_state waits."""
  made = threading.Event()
  threads = {}
  iterate, init_state = TrainInput.__iter__, Trainer.init_state

  def recorded_iter(self):
    for batch in iterate(self):
      threads.setdefault('first batch', threading.get_ident())
      made.set()
      yield batch

  def init_state_after_the_first_batch(self):
    threads['init_state'] = threading.get_ident()
    assert made.wait(timeout=30), 'the first batch was not made while the state initialised'
    return init_state(self)

  monkeypatch.setattr(TrainInput, '__iter__', recorded_iter)
  monkeypatch.setattr(Trainer, 'init_state', init_state_after_the_first_batch)
  summary = train_and_evaluate(fake_config(num_steps=2), tmp_path)
  assert summary['steps'] == 2
  assert threads['first batch'] != threads['init_state']


def test_logged_step_time_leaves_out_evals_and_checkpoints(tmp_path, devices, monkeypatch):
  from resnet_jax.writers import read_metrics
  evaluate = Trainer.evaluate

  def slow_evaluate(self, state, batches):
    time.sleep(2.0)
    return evaluate(self, state, batches)

  monkeypatch.setattr(Trainer, 'evaluate', slow_evaluate)
  train_and_evaluate(fake_config(num_steps=8, eval_every_steps=4), tmp_path)
  times = {r['step']: r['step_time_ms'] for r in read_metrics(tmp_path) if 'step_time_ms' in r}
  assert sorted(times) == [2, 4, 6, 8]
  assert times[6] < 1000, times   # the two steps after the eval at step 4, without its 2 s


def test_a_log_averages_every_step_since_the_last_one_across_checkpoints(tmp_path, devices):
  from resnet_jax.writers import read_metrics
  losses = {}
  for name, log_every in (('each', 1), ('every4', 4)):
    train_and_evaluate(fake_config(num_steps=8, log_every_steps=log_every, eval_every_steps=3),
                       tmp_path / name)
    losses[name] = {r['step']: r['train/loss'] for r in read_metrics(tmp_path / name)
                    if 'train/loss' in r}
  assert sorted(losses['every4']) == [4, 8]
  for step in (4, 8):   # the checkpoints at steps 3 and 6 fall inside these spans
    span = [losses['each'][s] for s in range(step - 3, step + 1)]
    assert losses['every4'][step] == pytest.approx(np.mean(span), rel=1e-5)


def test_best_metric_must_be_one_that_evals_report(devices):
  mesh = parallel.create_mesh(8)
  config = tiny_config()
  config.best_metric = 'eval/live_top1'   # live weights are reported only beside an EMA
  with pytest.raises(ValueError, match=r"best_metric='eval/live_top1'.*valid: eval/loss"):
    Trainer(config, mesh, num_classes=10, image_shape=IMAGE_SHAPE, steps_per_epoch=10)
  config.optimizer.ema_decay = 0.9
  Trainer(config, mesh, num_classes=10, image_shape=IMAGE_SHAPE, steps_per_epoch=10)


def test_topk_counts_ties_and_non_finite_logits_against_the_label():
  logits = jnp.array([[1.0, 3.0, 3.0, 0.0],       # the label (1) ties with class 2 at the top
                      [2.0, 2.0, 2.0, 2.0],       # all equal
                      [jnp.nan] * 4,              # a diverged model
                      [0.0, 5.0, 1.0, 2.0]])      # a clear top-1
  labels = jnp.array([1, 0, 3, 1])
  np.testing.assert_array_equal(topk_correct(logits, labels, 1), [0, 0, 0, 1])
  np.testing.assert_array_equal(topk_correct(logits, labels, 2), [1, 0, 0, 1])
  np.testing.assert_array_equal(topk_correct(logits, labels, 4), [1, 1, 0, 1])


@pytest.mark.parametrize('key, value, match', [
    ('log_every_steps', 0, 'log_every_steps=0'),
    ('eval_every_steps', -1, 'eval_every_steps=-1'),
    ('optimizer.ema_decay', 1.0, r'optimizer.ema_decay=1.0 must be in \[0, 1\)'),
    ('schedule.boundaries', (3.0, 3.04), r'schedule.boundaries \(3.0, 3.04\) \(epochs\) fall on'),
])
def test_unusable_periods_decays_and_boundaries_are_refused(devices, key, value, match):
  config = tiny_config()
  config.schedule.update(name='multistep', unit='epochs')
  section, _, name = key.rpartition('.')
  (config[section] if section else config)[name] = value
  with pytest.raises(ValueError, match=match):
    Trainer(config, parallel.create_mesh(8), num_classes=10, image_shape=IMAGE_SHAPE,
            steps_per_epoch=10)


def test_meshes_take_only_the_devices_there_are(devices):
  assert parallel.create_mesh().devices.size == 8 and parallel.create_mesh(2).devices.size == 2
  assert list(parallel.local_mesh(3).devices) == jax.local_devices()[:3]
  for make, n in ((parallel.create_mesh, 9), (parallel.local_mesh, 9), (parallel.local_mesh, 0)):
    with pytest.raises(ValueError, match=f'asked for {n} '):
      make(n)
