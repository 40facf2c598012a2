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


def random_erasing(images: jax.Array, rng: jax.Array, probability: float, *,
                   area_range: tuple[float, float] = (0.02, 0.4),
                   min_aspect: float = 0.3) -> jax.Array:
  """Random erasing (Zhong et al. 2017): with `probability`, one rectangle per image gets noise.

  The rectangle covers a fraction of the image drawn from `area_range`, with an aspect ratio
  log-uniform in [min_aspect, 1 / min_aspect] (clipped to the image), at a uniform position;
  its pixels become uniform noise in [0, 1]. `images` are floats on the [0, 1] scale.
  """
  n, h, w, _ = images.shape
  k_apply, k_area, k_ratio, k_top, k_left, k_noise = jax.random.split(rng, 6)
  area = h * w * jax.random.uniform(k_area, (n,), minval=area_range[0], maxval=area_range[1])
  log_aspect = jnp.log(min_aspect)
  aspect = jnp.exp(jax.random.uniform(k_ratio, (n,), minval=log_aspect, maxval=-log_aspect))
  eh = jnp.clip(jnp.round(jnp.sqrt(area * aspect)), 1, h)
  ew = jnp.clip(jnp.round(jnp.sqrt(area / aspect)), 1, w)
  top = jnp.floor(jax.random.uniform(k_top, (n,)) * (h - eh + 1))
  left = jnp.floor(jax.random.uniform(k_left, (n,)) * (w - ew + 1))
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]
  inside = ((rows >= top[:, None, None]) & (rows < (top + eh)[:, None, None])
            & (cols >= left[:, None, None]) & (cols < (left + ew)[:, None, None]))
  erase = inside & jax.random.bernoulli(k_apply, probability, (n,))[:, None, None]
  noise = jax.random.uniform(k_noise, images.shape, images.dtype)
  return jnp.where(erase[..., None], noise, images)


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


def upscale(images: jax.Array, factor: int) -> jax.Array:
  """Bilinear upsampling of [N, H, W, C] to [N, factor * H, factor * W, C]."""
  if not isinstance(factor, int) or factor < 1:
    raise ValueError(f'data.upscale must be a positive integer, got {factor!r}')
  if factor == 1:
    return images
  n, h, w, c = images.shape
  return jax.image.resize(images, (n, factor * h, factor * w, c), method='linear')


def prepare_images(images_u8: jax.Array, rng: jax.Array | None, *, train: bool,
                   data_config: ml_collections.ConfigDict, dtype: jnp.dtype) -> jax.Array:
  """uint8 [N, H, W, C] -> `dtype`: scaled to [0, 1], PCA lighting and random erasing (train
  only), upscaled by `data.upscale`, normalised."""
  images = images_u8.astype(jnp.float32) / 255.0
  augments = data_config.pca_lighting > 0 or data_config.random_erasing > 0
  if train and augments and rng is None:
    raise ValueError('data.pca_lighting and data.random_erasing need an rng in training')
  if train and data_config.pca_lighting > 0:
    images = pca_lighting(images, rng, data_config.pca_lighting)
  if train and data_config.random_erasing > 0:
    images = random_erasing(images, jax.random.fold_in(rng, 1), data_config.random_erasing)
  images = upscale(images, data_config.upscale)
  images = normalize(images, tuple(data_config.mean), tuple(data_config.std))
  return images.astype(dtype)
