"""Knowledge distillation: the loss, the step with a teacher, a run distilled from a run."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import parallel
from resnet_jax.data.device_ops import prepare_images
from resnet_jax.train.distill import distillation_loss
from resnet_jax.train.loop import TrainedModel, Trainer, train_and_evaluate
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


def test_the_step_distils_from_the_teachers_eval_outputs(devices):
  """The step's loss is (1 - w) * cross-entropy + w * T^2 KL against the teacher run in eval mode
  on the same images; the teacher's variables stay as they were."""
  config = tiny_config()
  config.distill.update(teacher='(in memory)', weight=0.7, temperature=2.0)
  mesh = parallel.create_mesh()
  teacher_model = Trainer(tiny_config(width=16), mesh, num_classes=10, image_shape=IMAGE_SHAPE,
                          steps_per_epoch=10)
  teacher_state = jax.device_get(teacher_model.init_state())
  variables = {'params': teacher_state.params, 'batch_stats': teacher_state.batch_stats}
  teacher = TrainedModel(tiny_config(width=16), teacher_model.model, variables, step=3,
                         num_classes=10, channels=3)
  trainer = Trainer(config, mesh, num_classes=10, image_shape=IMAGE_SHAPE, steps_per_epoch=10,
                    teacher=teacher)
  state = trainer.init_state()
  batch = random_batch()
  images = prepare_images(jnp.asarray(batch['image']), None, train=False,
                          data_config=config.data, dtype=jnp.float32)
  logits, _ = trainer.model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                                  images, train=True, mutable=['batch_stats'])
  teacher_logits = teacher.model.apply(variables, images, train=False)
  expected = jnp.mean(0.3 * cross_entropy(logits, batch['label'], 0.0)
                      + 0.7 * distillation_loss(logits, teacher_logits, 2.0))
  _, metrics = trainer.train_step(state, jax.device_put(batch, parallel.batch_sharding(mesh)))
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-4)
  plain = Trainer(tiny_config(), mesh, num_classes=10, image_shape=IMAGE_SHAPE,
                  steps_per_epoch=10)
  _, plain_metrics = plain.train_step(plain.init_state(),
                                      jax.device_put(batch, parallel.batch_sharding(mesh)))
  assert abs(float(plain_metrics['loss']) - float(metrics['loss'])) > 1e-3


def test_a_run_distils_from_a_finished_run_and_bad_teachers_are_named(tmp_path, devices):
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
