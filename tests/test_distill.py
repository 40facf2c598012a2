"""Knowledge distillation: the loss, the step with a teacher, a run distilled from a run."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import parallel
from resnet_jax.data.device_ops import prepare_images
from resnet_jax.checkpoint import Checkpointer
from resnet_jax.train.distill import check_teacher, distillation_loss
from resnet_jax.train.loop import train_and_evaluate
from resnet_jax.train.restore import TrainedModel, restore_trained
from resnet_jax.train.trainer import Trainer
from resnet_jax.train.mixing import mix_batch
from resnet_jax.train.steps import cross_entropy
from tests.helpers import fake_config
from tests.test_train_step import IMAGE_SHAPE, random_batch, tiny_config


def test_distillation_loss_is_t_squared_kl_with_the_soft_targets_gradient():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(2, 4, 5)).astype(np.float32) * 3
  t = 4.0
  softmax = lambda z: np.exp(z - z.max(-1, keepdims=True)) / np.exp(
      z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)
  p, q = softmax(teacher / t), softmax(student / t)
  expected = t * t * np.sum(p * (np.log(p) - np.log(q)), axis=-1)
  np.testing.assert_allclose(distillation_loss(student, teacher, t), expected, rtol=1e-5)
  np.testing.assert_allclose(distillation_loss(teacher, teacher, t), 0, atol=1e-5)
  # d/d student = T * (softmax(student / T) - softmax(teacher / T)); nothing flows to the teacher
  grad_s, grad_t = jax.grad(lambda s, u: distillation_loss(s, u, t).sum(), argnums=(0, 1))(
      jnp.asarray(student), jnp.asarray(teacher))
  np.testing.assert_allclose(grad_s, t * (q - p), rtol=1e-4, atol=1e-6)
  assert not np.any(np.asarray(grad_t))


def test_the_step_distils_from_the_teachers_eval_outputs_on_the_mixed_images(devices):
  """The step's loss is (1 - w) * (mixed) cross-entropy + w * T^2 KL against the teacher run in
  eval mode on the same CutMix-ed images; the teacher's variables stay as they were."""
  config = tiny_config()
  config.data.update(cutmix=1.0)
  config.distill.update(teacher='(in memory)', weight=0.7, temperature=2.0)
  mesh = parallel.create_mesh()
  teacher_trainer = Trainer(tiny_config(width=16), mesh, num_classes=10,
                            image_shape=IMAGE_SHAPE, steps_per_epoch=10)
  teacher_state = jax.device_get(teacher_trainer.init_state())
  params = jax.tree.map(np.array, teacher_state.params)
  params['head']['kernel'] *= 30   # confident soft targets: a KL term as large as the CE
  variables = {'params': params, 'batch_stats': teacher_state.batch_stats}
  teacher = TrainedModel(tiny_config(width=16), teacher_trainer.model, variables, step=3,
                         num_classes=10, channels=3)
  trainer = Trainer(config, mesh, num_classes=10, image_shape=IMAGE_SHAPE, steps_per_epoch=10,
                    teacher=teacher)
  state = trainer.init_state()
  batch = random_batch()
  rng = jax.random.fold_in(state.rng, state.step)
  images = prepare_images(jnp.asarray(batch['image']), rng, train=True,
                          data_config=config.data, dtype=jnp.float32)
  mixed = mix_batch(images, jnp.asarray(batch['label']), jax.random.fold_in(rng, 2), config.data)
  logits, _ = trainer.model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                                  mixed.images, train=True, mutable=['batch_stats'])
  teacher_logits = teacher.model.apply(variables, mixed.images, train=False)
  ce = (mixed.weight * cross_entropy(logits, batch['label'], 0.0)
        + (1 - mixed.weight) * cross_entropy(logits, mixed.partner_labels, 0.0))
  kd = distillation_loss(logits, teacher_logits, 2.0)
  assert float(jnp.mean(kd)) > 0.5 * float(jnp.mean(ce))
  expected = jnp.mean(0.3 * ce + 0.7 * kd)
  before = jax.tree.map(np.array, trainer.train_step.bound)
  _, metrics = trainer.train_step(state, jax.device_put(batch, parallel.batch_sharding(mesh)))
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-4)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(trainer.train_step.bound), before)


@pytest.mark.parametrize('key, value', [('image_size', 24), ('upscale', 2), ('mean', (0.1,)),
                                        ('std', (0.9,))])
def test_a_teacher_that_saw_other_inputs_is_refused(key, value):
  student, teacher = tiny_config(), tiny_config()
  student.distill.teacher = 'runs/t'
  teacher.data[key] = value
  with pytest.raises(ValueError, match=f'runs/t: data.{key} is'):
    check_teacher(student, teacher, num_classes=10, teacher_classes=10, channels=3,
                  teacher_channels=3)
  check_teacher(student, tiny_config(), num_classes=10, teacher_classes=10, channels=3,
                teacher_channels=3)
  with pytest.raises(ValueError, match='3-channel images, the data has 1'):
    check_teacher(student, tiny_config(), num_classes=10, teacher_classes=10, channels=1,
                  teacher_channels=3)


def test_the_teacher_is_its_runs_ema_restored_whatever_its_batch_size(tmp_path, devices):
  """restore_trained gives the EMA weights where the run kept them, and restores a run whose
  batch size does not divide this host's devices (as if trained on 6 GPUs: 60 on 8 here)."""
  config = fake_config(num_steps=3)
  config.optimizer.ema_decay = 0.5
  train_and_evaluate(config, tmp_path / 'run')
  saved = json.loads((tmp_path / 'run' / 'config.json').read_text())
  saved.update(batch_size=60, eval_batch_size=60)
  (tmp_path / 'run' / 'config.json').write_text(json.dumps(saved))
  trained = restore_trained(tmp_path / 'run')
  assert trained.step == 3 and trained.num_classes == 10 and trained.channels == 3
  assert trained.config.batch_size == 60   # the run's config, as saved
  trainer = Trainer(config, parallel.create_mesh(), num_classes=10, image_shape=(16, 16, 3),
                    steps_per_epoch=10)
  ckpt = Checkpointer(tmp_path / 'run')
  state, _ = ckpt.restore(trainer.abstract_state, config, 3)
  ckpt.close()
  same = lambda a, b: all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a),
                                                               jax.tree.leaves(b)))
  assert same(trained.variables['params'], state.ema_params)
  assert not same(trained.variables['params'], state.params)


def test_a_run_distils_from_a_finished_run_and_bad_teachers_are_named(tmp_path, devices,
                                                                     caplog):
  teacher_dir = tmp_path / 'teacher'
  train_and_evaluate(fake_config(num_steps=2), teacher_dir)
  student = fake_config(num_steps=2)
  student.model.width = 4
  student.distill.teacher = str(teacher_dir)
  summary = train_and_evaluate(student, tmp_path / 'student')
  assert summary['steps'] == 2 and np.isfinite(summary['final']['eval/top1'])
  info = json.loads((tmp_path / 'student' / 'run_info.json').read_text())
  assert info['teacher']['workdir'] == str(teacher_dir) and info['teacher']['step'] == 2
  assert info['teacher']['params'] > info['params']
  # A finished student reruns without its teacher (moved away); resumed after the teacher moved
  # on, it says so.
  teacher_dir.rename(tmp_path / 'moved')
  assert train_and_evaluate(student, tmp_path / 'student')['final'] == summary['final']
  (tmp_path / 'moved').rename(teacher_dir)
  train_and_evaluate(fake_config(num_steps=3), teacher_dir)
  student.num_steps = 3
  with caplog.at_level(logging.WARNING):
    assert train_and_evaluate(student, tmp_path / 'student')['steps'] == 3
  assert f"another distillation teacher: ('{teacher_dir}', 2) before, ('{teacher_dir}', 3)" \
      in caplog.text

  bad = fake_config(num_steps=2)
  bad.distill.teacher = str(tmp_path / 'missing')
  with pytest.raises(FileNotFoundError, match='missing.*not a training run'):
    train_and_evaluate(bad, tmp_path / 'bad1')
  bad.distill.teacher = str(teacher_dir)
  bad.data.fake_num_classes = 5
  with pytest.raises(ValueError, match='teacher has 10 classes, the data 5'):
    train_and_evaluate(bad, tmp_path / 'bad2')
  bad.data.fake_num_classes = 10
  bad.data.mean = (0.2,)
  with pytest.raises(ValueError, match=r'data\.mean is .* for the teacher'):
    train_and_evaluate(bad, tmp_path / 'bad3')
  bad.data.mean = student.data.mean
  bad.distill.weight = 0.0
  with pytest.raises(ValueError, match=r'distill\.weight=0\.0'):
    train_and_evaluate(bad, tmp_path / 'bad4')
  bad.distill.update(weight=0.5, checkpoint='last')
  with pytest.raises(ValueError, match=r"distill\.checkpoint must be 'latest' or 'best'"):
    train_and_evaluate(bad, tmp_path / 'bad5')
