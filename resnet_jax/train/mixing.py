"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019), per example, inside the train step.

Each image is mixed with its partner, the image at the mirrored position of the global batch
(as timm does), with its own mixing weight; the loss is the weighted sum of the cross-entropies
with the two labels (the same as the cross-entropy with the mixed label).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections


class MixedBatch(NamedTuple):
  images: jax.Array
  partner_labels: jax.Array   # [N] the label of the image mixed into each one
  weight: jax.Array           # [N] float32: the share of each image's own label in its target


def check_mixing(data_config: ml_collections.ConfigDict) -> None:
  """Refuses mixing settings that mean nothing, naming the key."""
  for key in ('mixup', 'cutmix'):
    if data_config[key] < 0:
      raise ValueError(f'data.{key} is the alpha of a Beta distribution and must be >= 0 '
                       f'(0 = off), got {data_config[key]}')
  if not 0 <= data_config.mix_prob <= 1:
    raise ValueError(f'data.mix_prob must be in [0, 1], got {data_config.mix_prob}')


def mixing_enabled(data_config: ml_collections.ConfigDict) -> bool:
  return (data_config.mixup > 0 or data_config.cutmix > 0) and data_config.mix_prob > 0


def cutmix_boxes(shape: tuple[int, int], area: jax.Array, rng: jax.Array) -> jax.Array:
  """[N, H, W] masks of boxes covering about `area` [N] of the image, with the image's aspect
  ratio, centred uniformly and clipped at the borders (as in the CutMix paper)."""
  h, w = shape
  k_y, k_x = jax.random.split(rng)
  n = area.shape[0]
  side = jnp.sqrt(area)
  cy = jax.random.uniform(k_y, (n,)) * h
  cx = jax.random.uniform(k_x, (n,)) * w
  half_h, half_w = jnp.round(side * h) / 2, jnp.round(side * w) / 2
  top, bottom = jnp.round(cy - half_h), jnp.round(cy + half_h)
  left, right = jnp.round(cx - half_w), jnp.round(cx + half_w)
  rows = jnp.arange(h)[None, :, None]
  cols = jnp.arange(w)[None, None, :]
  return ((rows >= top[:, None, None]) & (rows < bottom[:, None, None])
          & (cols >= left[:, None, None]) & (cols < right[:, None, None]))


def mix_batch(images: jax.Array, labels: jax.Array, rng: jax.Array,
              data_config: ml_collections.ConfigDict) -> MixedBatch:
  """Mixes each image, with probability `data.mix_prob`, with its partner: by mixup (weight
  ~ Beta(data.mixup, data.mixup)) or by CutMix (a box of the partner pasted in, its area
  ~ 1 - Beta(data.cutmix, data.cutmix)); with both alphas set, each image draws one of the two
  with equal odds. CutMix's weight is the exact share of pixels the image keeps."""
  n, height, width, _ = images.shape
  k_apply, k_choice, k_mixup, k_cutmix, k_box = jax.random.split(rng, 5)
  mixup, cutmix = data_config.mixup, data_config.cutmix
  own = images.astype(jnp.float32)
  partner = own[::-1]
  candidates = []   # (mixed images, weight) of each method that is on
  if mixup > 0:
    weight = jax.random.beta(k_mixup, mixup, mixup, (n,))
    candidates.append((weight[:, None, None, None] * own
                       + (1 - weight[:, None, None, None]) * partner, weight))
  if cutmix > 0:
    box = cutmix_boxes((height, width), 1 - jax.random.beta(k_cutmix, cutmix, cutmix, (n,)), k_box)
    candidates.append((jnp.where(box[..., None], partner, own),
                       1 - jnp.mean(box, axis=(1, 2), dtype=jnp.float32)))
  (out, weight), *others = candidates
  if others:   # both on: CutMix for the images that draw it
    use_cutmix = jax.random.bernoulli(k_choice, 0.5, (n,))
    out = jnp.where(use_cutmix[:, None, None, None], others[0][0], out)
    weight = jnp.where(use_cutmix, others[0][1], weight)

  apply = jax.random.bernoulli(k_apply, data_config.mix_prob, (n,))
  out = jnp.where(apply[:, None, None, None], out, own)
  weight = jnp.where(apply, weight, 1.0)
  return MixedBatch(out.astype(images.dtype), labels[::-1], weight)
