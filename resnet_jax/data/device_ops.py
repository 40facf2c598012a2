"""Per-pixel float work on the device, inside the jitted train and eval steps (pure jnp)."""

import jax
import jax.numpy as jnp
import ml_collections

# AlexNet's PCA of ImageNet RGB pixels on the [0, 1] scale (as in fb.resnet.torch):
# eigenvalues, and the eigenvectors as the columns of the matrix.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                       (-0.5808, -0.0045, -0.8140),
                       (-0.5836, -0.6948, 0.4203))


def pca_lighting(images: jax.Array, rng: jax.Array, strength: float) -> jax.Array:
  """Adds eigvec @ (alpha * eigval), alpha ~ N(0, strength^2) per image, to every RGB pixel."""
  if images.shape[-1] != 3:
    raise ValueError(f'data.pca_lighting needs RGB images, got {images.shape[-1]} channels')
  alpha = strength * jax.random.normal(rng, (images.shape[0], 3), jnp.float32)
  shift = (alpha * jnp.asarray(IMAGENET_PCA_EIGVAL)) @ jnp.asarray(IMAGENET_PCA_EIGVEC).T
  return images + shift[:, None, None, :]


def normalize(images: jax.Array, mean: tuple[float, ...], std: tuple[float, ...]) -> jax.Array:
  """(x - mean) / std per channel; a single value applies to every channel; () leaves x as is."""
  channels = images.shape[-1]
  for name, values in (('mean', mean), ('std', std)):
    if len(values) not in (0, 1, channels):
      raise ValueError(f'data.{name} has {len(values)} values for {channels}-channel images')
  if mean:
    images = images - jnp.asarray(mean, jnp.float32)
  if std:
    images = images / jnp.asarray(std, jnp.float32)
  return images


def prepare_images(images_u8: jax.Array, rng: jax.Array | None, *, train: bool,
                   data_config: ml_collections.ConfigDict, dtype: jnp.dtype) -> jax.Array:
  """uint8 [N, H, W, C] -> `dtype`: scaled to [0, 1], PCA lighting (train only), normalised."""
  images = images_u8.astype(jnp.float32) / 255.0
  if train and data_config.pca_lighting > 0:
    if rng is None:
      raise ValueError('data.pca_lighting > 0 needs an rng in training')
    images = pca_lighting(images, rng, data_config.pca_lighting)
  images = normalize(images, tuple(data_config.mean), tuple(data_config.std))
  return images.astype(dtype)
