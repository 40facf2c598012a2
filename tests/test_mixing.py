"""Mixup and CutMix: what each image becomes, its label weight, and the loss of the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import parallel
from resnet_jax.config_base import base_config
from resnet_jax.data.device_ops import prepare_images
from resnet_jax.train.trainer import Trainer
from resnet_jax.train.mixing import check_mixing, mix_batch
from resnet_jax.train.steps import cross_entropy
from tests.test_train_step import IMAGE_SHAPE, one_step, random_batch, tiny_config


def data_config(**kw):
  d = base_config().data
  d.update(kw)
  return d


def distinct_images(n=16, size=8):
  """Images whose pixels are all different, so that each output pixel names its source."""
  return jnp.arange(n * size * size * 3, dtype=jnp.float32).reshape(n, size, size, 3)


def test_cutmix_pastes_a_partner_box_and_weights_by_the_pixels_kept():
  images = distinct_images()
  labels = jnp.arange(16)
  mixed = mix_batch(images, labels, jax.random.key(0), data_config(cutmix=1.0))
  out, own, partner = map(np.asarray, (mixed.images, images, images[::-1]))
  from_own = np.all(out == own, axis=-1)
  from_partner = np.all(out == partner, axis=-1)
  assert np.all(from_own | from_partner)
  np.testing.assert_array_equal(mixed.partner_labels, labels[::-1])
  np.testing.assert_allclose(mixed.weight, from_own.mean(axis=(1, 2)), rtol=1e-6)
  assert 0 < np.mean(mixed.weight) < 1
  # The pasted pixels form one box: the rows and the columns it touches, all of them.
  for i in range(16):
    rows, cols = np.nonzero(from_partner[i])
    if rows.size:
      assert rows.size == len(set(rows)) * len(set(cols))


def test_mixup_blends_each_image_with_its_partner_by_its_weight():
  images = distinct_images()
  mixed = mix_batch(images, jnp.arange(16), jax.random.key(1), data_config(mixup=0.4))
  w = np.asarray(mixed.weight)[:, None, None, None]
  np.testing.assert_allclose(mixed.images, w * images + (1 - w) * images[::-1], rtol=1e-5)
  assert np.all((w >= 0) & (w <= 1)) and len(np.unique(w)) == 16


def test_both_choose_per_image_and_mix_prob_leaves_the_others_alone():
  images = distinct_images(n=64)
  mixed = mix_batch(images, jnp.arange(64), jax.random.key(2),
                    data_config(mixup=0.4, cutmix=1.0, mix_prob=0.5))
  out, own, partner = map(np.asarray, (mixed.images, images, images[::-1]))
  untouched = np.all(out == own, axis=(1, 2, 3))
  boxes = np.all(np.all(out == own, -1) | np.all(out == partner, -1), axis=(1, 2)) & ~untouched
  blends = ~untouched & ~boxes
  assert untouched.any() and boxes.any() and blends.any()
  np.testing.assert_array_equal(np.asarray(mixed.weight)[untouched], 1.0)


def test_bad_mixing_settings_name_the_key():
  with pytest.raises(ValueError, match='data.cutmix'):
    check_mixing(data_config(cutmix=-1.0))
  with pytest.raises(ValueError, match='data.mix_prob'):
    check_mixing(data_config(mixup=0.2, mix_prob=1.5))


def test_train_step_loss_is_the_weighted_cross_entropy_of_both_labels(devices):
  batch = random_batch()
  config = tiny_config()
  config.data.update(cutmix=1.0, mixup=0.2)
  config.label_smoothing = 0.1
  _, metrics = one_step(config, 8, batch)
  _, plain_metrics = one_step(tiny_config(), 8, batch)
  assert not np.isclose(metrics['loss'], plain_metrics['loss'])

  # The same loss by hand, from the initial state's logits on the mixed batch.
  trainer = Trainer(config, parallel.create_mesh(1), num_classes=10, image_shape=IMAGE_SHAPE,
                    steps_per_epoch=10)
  state = trainer.init_state()
  rng = jax.random.fold_in(state.rng, state.step)
  images = prepare_images(jnp.asarray(batch['image']), rng, train=True, data_config=config.data,
                          dtype=jnp.float32)
  mixed = mix_batch(images, jnp.asarray(batch['label']), jax.random.fold_in(rng, 2), config.data)
  logits, _ = trainer.model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                                  mixed.images, train=True, mutable=['batch_stats'])
  w = mixed.weight
  expected = jnp.mean(w * cross_entropy(logits, batch['label'], 0.1)
                      + (1 - w) * cross_entropy(logits, mixed.partner_labels, 0.1))
  np.testing.assert_allclose(metrics['loss'], expected, rtol=1e-4)
