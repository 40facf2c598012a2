"""Test-time protocols: which views of each image the network sees, and how their scores combine.

    center_crop  the training eval: shorter side to data.eval_resize, the centre image_size crop
    ten_crop     the paper's 10-crop testing: the same resize, the four corner crops and the centre
                 crop, and their horizontal flips where training flips (data.hflip)
    padded_ten_crop  10-crop testing for CIFAR-style training (pad, random crop): the eval crop
                 and the four crops shifted diagonally from it by data.pad pixels (of the
                 network's input), zero-padded where they leave the image (as training pads),
                 and their horizontal flips where training flips
    multi_scale  the paper's fully-convolutional testing: for each s in eval.scales, the shorter
                 side resized to s and the central s x s square fed whole (the network ends in
                 global average pooling, so any size works)

The softmax scores of an example's views are averaged; loss, top-1, top-5 and the confusion
matrix are those of the averaged scores. Each view is one batch of one shape (one per scale).

Non-square images in `multi_scale`: the central square of the shorter side is fed, not the whole
rectangle, so that a batch is one array, and the aspect ratio and object scale stay those of
training; the ends of the longer side (1/8 of a 4:3 photo at each end) are not seen.

Where the views are made: record sources read by grain (tfds, idx, folder) cut them on the host
from the decoded image, each view resampled once from the source pixels, exactly as the eval crop
is. Fake and device-resident data are already image_size squares on the device; the views are cut
from that square there with the same geometry (on Fashion-MNIST, whose eval crop is the whole
28x28 image, the five crops coincide and `ten_crop` averages the image and its mirror image;
`multi_scale` resizes it to each scale, e.g. `--config.eval.scales='(28, 32, 40)'`; there
`padded_ten_crop` gives five distinct crops).
`center_crop` is the training eval input unchanged. The corners are those of the resized
rectangle (as torchvision's TenCrop), not of its central square as in AlexNet's 10-crop.
"""

import collections
import dataclasses
import functools
import math
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh
from PIL import Image, ImageOps

from resnet_jax import parallel
from resnet_jax.data import grain_loader
from resnet_jax.data.decode import BadImageError, load_pixels, open_image
from resnet_jax.data.device_ops import prepare_images
from resnet_jax.data.global_batches import feed, to_global
from resnet_jax.data.inputs import Batch, EvalInput
from resnet_jax.data.sources import load_split
from resnet_jax.data.splits import DatasetInfo
from resnet_jax.data.transforms import Box, center_crop_box, crop_resize
from resnet_jax.train.steps import topk_correct

PROTOCOLS = ('center_crop', 'ten_crop', 'padded_ten_crop', 'multi_scale')
PAPER_SCALES = (224, 256, 384, 480, 640)   # multi-scale testing of 224 crops (Sec. 3.4)
View = tuple[Box, int, bool]   # (box in source pixels, output side, horizontal flip)


@dataclasses.dataclass(frozen=True)
class Protocol:
  """A protocol with the sizes it needs (`resize` 0: no resizing, as data.eval_resize)."""
  protocol: str
  size: int
  resize: int
  scales: tuple[int, ...]
  flip: bool = True   # the mirrored views: only where training flips (data.hflip, augmenting)
  pad: int = 0        # padded_ten_crop's shift (data.pad)

  def __post_init__(self):
    if self.protocol not in PROTOCOLS:
      raise ValueError(f'unknown eval.protocol {self.protocol!r}; valid: {", ".join(PROTOCOLS)}')
    if self.protocol == 'multi_scale' and (not self.scales or min(self.scales) < 1):
      raise ValueError(f'eval.scales must be positive image sides for multi_scale, got '
                       f'{self.scales}')
    if self.protocol == 'padded_ten_crop' and self.pad < 1:
      raise ValueError(f'eval.protocol padded_ten_crop shifts its crops by data.pad pixels; '
                       f'data.pad is {self.pad}')

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'Protocol':
    if config.eval.protocol == 'padded_ten_crop' and config.data.augment != 'cifar':
      raise ValueError(f"eval.protocol padded_ten_crop shifts crops as training's pad-crop does "
                       f"(data.augment='cifar'); this config trains with data.augment="
                       f"{config.data.augment!r}")
    size = config.data.image_size
    scales = (tuple(int(s) for s in config.eval.scales)
              or tuple(round(s * size / 224) for s in PAPER_SCALES))
    return cls(config.eval.protocol, size, config.data.eval_resize, scales,
               flip=config.data.hflip and config.data.augment != 'none',
               pad=config.data.pad)

  def views(self, width: float, height: float) -> list[View]:
    """The views of a width x height image."""
    if self.protocol == 'multi_scale':
      side = min(width, height)
      left, upper = (width - side) / 2, (height - side) / 2
      return [((left, upper, left + side, upper + side), s, False) for s in self.scales]
    left, upper, right, lower = center_crop_box(width, height, size=self.size, resize=self.resize)
    if self.protocol == 'center_crop':
      return [((left, upper, right, lower), self.size, False)]
    w, h = right - left, lower - upper
    if self.protocol == 'padded_ten_crop':   # shifts of data.pad pixels of the network's input
      sx, sy = self.pad * w / self.size, self.pad * h / self.size
      corners = [(left + dx, upper + dy) for dy in (-sy, sy) for dx in (-sx, sx)] + [(left, upper)]
    else:
      corners = [(0, 0), (width - w, 0), (0, height - h), (width - w, height - h), (left, upper)]
    return [((x, y, x + w, y + h), self.size, flip)
            for flip in ((False, True) if self.flip else (False,)) for x, y in corners]

  def view_sides(self) -> list[int]:
    return [side for _, side, _ in self.views(1, 1)]


def host_views(protocol: Protocol, data: bytes | np.ndarray, key: str,
               channels: int) -> tuple[np.ndarray, ...]:
  """The views of one encoded image (or array) as uint8 [side, side, channels] arrays.

  Decoded once (a JPEG at the smallest draft scale that every view allows), each view resampled
  once from the decoded pixels (zero-padded where a view leaves the image).
  """
  header = open_image(data, key)
  width, height = header.size
  shrink = max(1.0, min(min(b[2] - b[0], b[3] - b[1]) / side
                        for b, side, _ in protocol.views(width, height)))
  pixels = load_pixels(header, channels, key,
                       draft_size=(math.ceil(width / shrink), math.ceil(height / shrink)))
  return tuple(_view(pixels, box, side, flip, channels, key)
               for box, side, flip in protocol.views(*pixels.size))


def _view(pixels: Image.Image, box: Box, side: int, flip: bool, channels: int,
          key: str) -> np.ndarray:
  """One view; a box that leaves the image (padded_ten_crop) reads zeros there, as training's
  padding does (only such boxes: the others resample at the image's edges as the eval crop)."""
  border = math.ceil(max(0, -box[0], -box[1], box[2] - pixels.width, box[3] - pixels.height))
  if border:
    pixels = ImageOps.expand(pixels, border, fill=0)
    box = (box[0] + border, box[1] + border, box[2] + border, box[3] + border)
  return crop_resize(pixels, box, side, channels, key, (flip, False))


def device_views(images: jax.Array, protocol: Protocol) -> tuple[jax.Array, ...]:
  """The views of a batch of uint8 squares [B, n, n, C] already on the device (pure, jittable)."""
  if protocol.protocol == 'center_crop':
    return (images,)
  b, h, w, c = images.shape
  pixels = images.astype(jnp.float32)
  # One geometry for the whole batch: views that coincide (on a square as large as the crop, the
  # five crops of ten_crop) are cut once. Where every view repeats equally often each is listed
  # once (the mean of the scores is the same, at a fraction of the model's work); otherwise as
  # often as the protocol lists it, so that each weighs as in the host's views.
  views = protocol.views(w, h)
  counts = collections.Counter(views)
  cut: dict[View, jax.Array] = {}
  for view in counts:
    (left, upper, right, lower), side, flip = view
    sy, sx = side / (lower - upper), side / (right - left)
    pixels_view = jax.image.scale_and_translate(
        pixels, (b, side, side, c), (1, 2), jnp.array([sy, sx]),
        jnp.array([-upper * sy, -left * sx]), method='linear', antialias=True)
    pixels_view = jnp.clip(jnp.round(pixels_view), 0, 255).astype(jnp.uint8)
    cut[view] = pixels_view[:, :, ::-1] if flip else pixels_view
  listed = list(counts) if len(set(counts.values())) == 1 else views
  return tuple(cut[view] for view in listed)


class ViewExamples:
  """Example index -> `{'views': tuple of uint8 arrays, 'label', 'mask'}` for grain.

  Index -1 (eval padding) and, with `skip_bad_images`, an undecodable image give zero views with
  `mask=False`; otherwise a bad image raises `BadImageError` naming its record.
  """

  def __init__(self, records, protocol: Protocol, channels: int, *, skip_bad_images: bool):
    self.records = records
    self.protocol = protocol
    self.channels = channels
    self.skip_bad_images = skip_bad_images

  def __call__(self, index: int) -> dict[str, Any]:
    if index >= 0:
      try:
        record = self.records[index]
        views = host_views(self.protocol, record['image'], record['key'], self.channels)
        return {'views': views, 'label': np.int32(record['label']), 'mask': np.bool_(True)}
      except BadImageError as e:
        if not self.skip_bad_images:
          raise
        logging.warning('skipped a bad image: %s', e)
    views = tuple(np.zeros((s, s, self.channels), np.uint8) for s in self.protocol.view_sides())
    return {'views': views, 'label': np.int32(0), 'mask': np.bool_(False)}

  @staticmethod
  def collate(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Examples -> a batch: each view, the labels and the masks stacked."""
    return {'views': tuple(map(np.stack, zip(*(e['views'] for e in examples)))),
            'label': np.stack([e['label'] for e in examples]),
            'mask': np.stack([e['mask'] for e in examples])}


def host_view_input(config: ml_collections.ConfigDict, mesh: Mesh,
                    protocol: Protocol) -> EvalInput:
  """One pass over the eval split of a record source, the views made by grain on the host."""
  d = config.data
  split = load_split(d, train=False)
  process_count = jax.process_count()
  load = ViewExamples(split.records, protocol, split.channels, skip_bad_images=d.skip_bad_images)
  ds = grain_loader.eval_dataset(load, batch_size=config.eval_batch_size // process_count,
                                 process_index=jax.process_index(), process_count=process_count)
  place = functools.partial(to_global, sharding=parallel.batch_sharding(mesh),
                            process_count=process_count)
  info = DatasetInfo(len(split.class_names), split.class_names,
                     (d.image_size, d.image_size, split.channels))
  return EvalInput(lambda: feed(grain_loader.host_batches(ds, num_workers=d.num_workers), place,
                                d.prefetch), info=info, num_examples=len(split))


def device_view_input(base: EvalInput, protocol: Protocol) -> EvalInput:
  """`base`'s batches with the views of their images cut on the device."""
  make = jax.jit(functools.partial(device_views, protocol=protocol))

  def one_pass() -> Iterator[Batch]:
    for batch in base:
      yield {'views': make(batch['image']), 'label': batch['label'], 'mask': batch['mask']}

  return EvalInput(one_pass, info=base.info, num_examples=base.num_examples)


def protocol_input(config: ml_collections.ConfigDict, mesh: Mesh, base: EvalInput) -> EvalInput:
  """The eval input of `config.eval.protocol`, given the config's usual eval input `base`."""
  protocol = Protocol.from_config(config)
  on_device = config.data.source == 'fake' or config.data.device_resident
  if protocol.protocol == 'center_crop' or on_device:
    return device_view_input(base, protocol)
  return host_view_input(config, mesh, protocol)


def protocol_eval_step(variables: dict[str, Any], batch: Batch, *, model: Any,
                       config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Sums over the real examples of one batch of views: loss, top-1, top-5, count, confusion.

  The confusion matrix (`confusion_matrix`) counts as top-1 does: its trace is the top-1 count.
  """
  by_shape: dict[tuple[int, ...], list[jax.Array]] = {}
  for view in batch['views']:   # views of one shape run as one batch
    by_shape.setdefault(view.shape, []).append(view)
  log_probs = []
  for shape, views in by_shape.items():
    images = prepare_images(jnp.concatenate(views), None, train=False, data_config=config.data,
                            dtype=jnp.dtype(config.dtype))
    logits = model.apply(variables, images, train=False)
    log_probs.append(jax.nn.log_softmax(logits).reshape(len(views), shape[0], -1))
  log_probs = jnp.concatenate(log_probs)
  log_mean = jax.nn.logsumexp(log_probs, axis=0) - math.log(log_probs.shape[0])
  labels, mask = batch['label'], batch['mask']
  num_classes = log_mean.shape[-1]
  top1 = topk_correct(log_mean, labels, 1)
  confusion = confusion_matrix(log_mean, labels, mask)
  mask = mask.astype(jnp.float32)
  return {
      'loss': -jnp.sum(jnp.take_along_axis(log_mean, labels[:, None], axis=-1)[:, 0] * mask),
      'top1': jnp.sum(top1 * mask),
      'top5': jnp.sum(topk_correct(log_mean, labels, min(5, num_classes)) * mask),
      'count': jnp.sum(mask),
      'confusion': confusion,
  }


def confusion_matrix(scores: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """int32 counts [true class, predicted class] of the examples where `mask`, an example counted
  as `topk_correct` counts it: right only where its label alone has the highest score (on a tie
  the prediction is the best other class), so the trace is the top-1 count."""
  num_classes = scores.shape[-1]
  right = topk_correct(scores, labels, 1) > 0
  others = jnp.where(jax.nn.one_hot(labels, num_classes, dtype=bool), -jnp.inf, scores)
  predicted = jnp.where(right, labels, jnp.argmax(others, axis=-1))
  return jnp.zeros((num_classes, num_classes), jnp.int32).at[labels, predicted].add(
      mask.astype(jnp.int32))


def evaluate_views(step: Callable, variables: dict[str, Any],
                   eval_input: EvalInput) -> dict[str, Any]:
  """Sums of `step` (compiled `protocol_eval_step`) of the model's `variables` over one pass,
  fetched to the host."""
  sums = None
  for batch in eval_input:
    out = step(variables, batch)
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  return jax.device_get(sums)


def compile_step(model: Any, config: ml_collections.ConfigDict, mesh: Mesh) -> Callable:
  """`protocol_eval_step` compiled for `mesh`. The steps of consecutive batches are independent
  programs with an all-reduce: on a CPU mesh each finishes before the next starts
  (parallel.finish_on_cpu_meshes)."""
  step = jax.jit(functools.partial(protocol_eval_step, model=model, config=config),
                 in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                 out_shardings=parallel.replicated(mesh))
  return lambda variables, batch: parallel.finish_on_cpu_meshes(step(variables, batch), mesh)


def summarize(sums: dict[str, Any], class_names: tuple[str, ...]) -> dict[str, Any]:
  """Metrics of the whole split from the summed step outputs (accuracies in [0, 1])."""
  confusion = np.asarray(sums['confusion'], np.int64)
  n = float(sums['count'])
  per_class = [{'class': name, 'count': int(confusion[i].sum()),
                'top1': float(confusion[i, i] / confusion[i].sum()) if confusion[i].sum() else None}
               for i, name in enumerate(class_names)]
  present = [c['top1'] for c in per_class if c['top1'] is not None]
  return {'eval/loss': float(sums['loss']) / n, 'eval/top1': float(sums['top1']) / n,
          'eval/top5': float(sums['top5']) / n,
          'eval/class_mean_top1': float(np.mean(present)), 'num_examples': int(n),
          'per_class': per_class,
          'class_names': list(class_names), 'confusion_matrix': confusion.tolist()}
