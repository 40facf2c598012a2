"""Random erasing, the on-device augmentation that runs inside the jitted train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.config_base import base_config
from resnet_jax.data import device_ops


def test_random_erasing_replaces_one_rectangle_per_image():
  images = jnp.full((256, 28, 28, 1), -1.0)   # outside [0, 1], so erased pixels are visible
  out = np.asarray(device_ops.random_erasing(images, jax.random.key(0), 1.0))
  erased = out[..., 0] >= 0
  assert ((out >= 0) & (out < 1) | (out == -1)).all()
  fractions = erased.mean(axis=(1, 2))
  assert fractions.min() > 0 and fractions.max() <= 0.45   # 0.4 of the area, sides rounded
  for mask in erased:   # a filled rectangle: its bounding box is all erased
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
  assert len({tuple(np.flatnonzero(m.any(1))) for m in erased}) > 50   # positions vary


def test_random_erasing_probability_and_train_only():
  images = jnp.full((2000, 8, 8, 1), 255, jnp.uint8)
  d = base_config().data
  d.update(mean=(), std=(), random_erasing=0.3)
  out = device_ops.prepare_images(images, jax.random.key(1), train=True, data_config=d,
                                  dtype=jnp.float32)
  touched = np.asarray((out < 1.0).any(axis=(1, 2, 3)))
  assert touched.mean() == pytest.approx(0.3, abs=0.04)
  eval_out = device_ops.prepare_images(images, None, train=False, data_config=d,
                                       dtype=jnp.float32)
  np.testing.assert_array_equal(eval_out, 1.0)
  with pytest.raises(ValueError, match='random_erasing'):
    device_ops.prepare_images(images, None, train=True, data_config=d, dtype=jnp.float32)


def test_upscale_is_bilinear_in_train_and_eval_and_refuses_bad_factors():
  images = jnp.asarray([[0, 255], [255, 0]], jnp.uint8).reshape(1, 2, 2, 1)
  d = base_config().data
  d.update(mean=(), std=(), upscale=2)
  for train in (True, False):
    out = device_ops.prepare_images(images, jax.random.key(0), train=train, data_config=d,
                                    dtype=jnp.float32)
    assert out.shape == (1, 4, 4, 1)
    # Half-pixel centres: the new first row samples the old one at x = -0.25, 0.25, 0.75, 1.25,
    # y = -0.25 (edges clamped): 0, 0.25, 0.75, 1 along x.
    np.testing.assert_allclose(out[0, 0, :, 0], [0, 0.25, 0.75, 1], atol=1e-6)
    np.testing.assert_allclose(out[0, 1, :, 0], [0.25, 0.375, 0.625, 0.75], atol=1e-6)
  for bad in (0, -2):
    d.upscale = bad
    with pytest.raises(ValueError, match='data.upscale'):
      device_ops.prepare_images(images, None, train=False, data_config=d, dtype=jnp.float32)
