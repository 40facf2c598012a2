"""The pure train and eval steps. `trainer.py` compiles them once over the mesh."""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from resnet_jax.data.device_ops import prepare_images
from resnet_jax.train.distill import distillation_loss
from resnet_jax.train.mixing import mix_batch, mixing_enabled
from resnet_jax.train.state import TrainState

Metrics = dict[str, jax.Array]


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
  """Per-example cross-entropy in float32, with optional label smoothing."""
  logits = logits.astype(jnp.float32)
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def topk_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where the label is among the k highest logits: ties count against the label (bf16
  logits tie often), and a non-finite label logit is never correct."""
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  rank = jnp.sum(logits >= label_logit, axis=-1) - 1   # other classes at or above the label
  return ((rank < k) & jnp.isfinite(label_logit[:, 0])).astype(jnp.float32)


def sharpness_aware_gradient(grad_fn, params, grads, rho: float):
  """SAM (Foret et al. 2021): the gradient at the worst nearby point `params + rho * g / |g|`.

  The loss, logits and BN statistics of the step stay those of the first pass at `params`.
  """
  scale = rho / (optax.tree.norm(grads) + 1e-12)
  perturbed = jax.tree.map(lambda p, g: p + scale * g.astype(p.dtype), params, grads)
  _, sam_grads = grad_fn(perturbed)
  return sam_grads


def train_step(state: TrainState, batch: dict[str, jax.Array], teacher_variables: Any = None, *,
               model: Any, tx: optax.GradientTransformation, schedule: optax.Schedule,
               config: ml_collections.ConfigDict,
               teacher_model: Any = None) -> tuple[TrainState, Metrics]:
  """One SGD step on a global batch (mixed by mixup or CutMix where the config asks; `top1`
  counts the images' own labels). A non-finite loss leaves the state unchanged. With a
  `teacher_model` (and its `teacher_variables`), the loss is distilled from its outputs on the
  same images (`distill.py`).

  The state is frozen on a NaN or infinite loss (nothing of that step reaches the weights, the
  EMA or a checkpoint); the loop sees `loss` in the metrics and stops, naming the step. That
  loss is the one of the weights the step starts from: they may be the last step's update.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  images = prepare_images(batch['image'], rng, train=True, data_config=config.data,
                          dtype=jnp.dtype(config.dtype))
  labels = batch['label']
  mixed = (mix_batch(images, labels, jax.random.fold_in(rng, 2), config.data)
           if mixing_enabled(config.data) else None)
  inputs = images if mixed is None else mixed.images
  teacher_logits = (None if teacher_model is None
                    else teacher_model.apply(teacher_variables, inputs, train=False))

  def loss_fn(params):
    logits, updates = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                  inputs, train=True, mutable=['batch_stats'],
                                  rngs={'drop_path': jax.random.fold_in(rng, 3)})
    losses = cross_entropy(logits, labels, config.label_smoothing)
    if mixed is not None:
      losses = (mixed.weight * losses + (1 - mixed.weight)
                * cross_entropy(logits, mixed.partner_labels, config.label_smoothing))
    if teacher_logits is not None:
      w = config.distill.weight
      losses = ((1 - w) * losses
                + w * distillation_loss(logits, teacher_logits, config.distill.temperature))
    return jnp.mean(losses), (logits, updates['batch_stats'])

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (logits, batch_stats)), grads = grad_fn(state.params)
  if rho := config.optimizer.sam_rho:
    grads = sharpness_aware_gradient(grad_fn, state.params, grads, rho)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema_params, ema_batch_stats = state.ema_params, state.ema_batch_stats
  if ema_params is not None:
    d = config.optimizer.ema_decay
    average = lambda e, v: d * e + (1.0 - d) * v
    ema_params = jax.tree.map(average, ema_params, params)
    if not config.optimizer.ema_bn_batches:   # else recomputed before each eval (EmaStatistics)
      ema_batch_stats = jax.tree.map(average, ema_batch_stats, batch_stats)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, ema_params=ema_params,
                            ema_batch_stats=ema_batch_stats)
  ok = jnp.isfinite(loss)
  new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
  metrics = {
      'loss': loss,
      'top1': jnp.mean(topk_correct(logits, labels, 1)),
      'lr': jnp.asarray(schedule(state.step), jnp.float32),
  }
  return new_state, metrics


def ema_batch_statistics(state: TrainState, batch: dict[str, jax.Array], *, stats_model: Any,
                         config: ml_collections.ConfigDict) -> Any:
  """The BN statistics of the EMA weights on `batch`, augmented as `train_step` augments it at
  this state's step but not mixed (the eval images are not mixed either). `stats_model` is the
  model with BN momentum 0, whose updated running statistics are the batch's own, and without
  stochastic depth: the statistics of the whole net, which evaluation runs."""
  rng = jax.random.fold_in(state.rng, state.step)
  images = prepare_images(batch['image'], rng, train=True, data_config=config.data,
                          dtype=jnp.dtype(config.dtype))
  _, updates = stats_model.apply({'params': state.ema_params, 'batch_stats': state.ema_batch_stats},
                                 images, train=True, mutable=['batch_stats'])
  return updates['batch_stats']


def eval_step(variables: dict[str, Any], batch: dict[str, jax.Array], *, model: Any,
              config: ml_collections.ConfigDict) -> Metrics:
  """Sums over the real (unmasked) examples of one eval batch: loss, top-1, top-5, count, and
  per true class the top-1 count (`class_top1`) and the count (`class_count`).

  `variables` are the model's ({'params', 'batch_stats'}): the EMA ones or the live ones.
  """
  images = prepare_images(batch['image'], None, train=False, data_config=config.data,
                          dtype=jnp.dtype(config.dtype))
  logits = model.apply(variables, images, train=False)
  mask = batch['mask'].astype(jnp.float32)
  labels = batch['label']
  num_classes = logits.shape[-1]
  top1 = topk_correct(logits, labels, 1) * mask
  per_class = jnp.zeros(num_classes, jnp.float32)
  return {
      'loss': jnp.sum(cross_entropy(logits, labels, 0.0) * mask),
      'top1': jnp.sum(top1),
      'top5': jnp.sum(topk_correct(logits, labels, min(5, num_classes)) * mask),
      'count': jnp.sum(mask),
      'class_top1': per_class.at[labels].add(top1),
      'class_count': per_class.at[labels].add(mask),
  }
