"""Optimizer and learning-rate schedules from the config (optax)."""

import jax
import ml_collections
import optax
from absl import logging


def peak_learning_rate(config: ml_collections.ConfigDict) -> float:
  """The linear scaling rule: `optimizer.lr` is the rate at `optimizer.lr_batch_size`."""
  return config.optimizer.lr * config.batch_size / config.optimizer.lr_batch_size


def _to_steps(value: float, unit: str, steps_per_epoch: int, total_steps: int) -> int:
  if unit == 'steps':
    return int(value)
  if unit == 'epochs':
    return int(round(value * steps_per_epoch))
  if unit == 'fraction':
    return int(round(value * total_steps))
  raise ValueError(f"schedule.unit must be 'steps', 'epochs' or 'fraction', got {unit!r}")


def create_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                    total_steps: int) -> optax.Schedule:
  """Multistep (the paper), cosine, linear decay or constant, each after an optional warmup."""
  s = config.schedule
  peak = peak_learning_rate(config)
  warmup = _to_steps(s.warmup, s.unit, steps_per_epoch, total_steps)
  decay_steps = max(total_steps - warmup, 1)
  if s.name == 'multistep':
    steps = [_to_steps(b, s.unit, steps_per_epoch, total_steps) - warmup for b in s.boundaries]
    if len(set(steps)) < len(steps) or min(steps, default=0) < 0:
      raise ValueError(f'schedule.boundaries {tuple(s.boundaries)} ({s.unit}) fall on the same '
                       f'step or inside the warmup ({warmup} steps): decays would be lost')
    if late := [b for b, step in zip(s.boundaries, steps) if step + warmup >= total_steps]:
      logging.warning('schedule.boundaries %s (%s) fall at or after the last step (%d): those '
                      'decays never happen in this run', late, s.unit, total_steps)
    main = optax.piecewise_constant_schedule(peak, {step: s.decay_factor for step in steps})
  elif s.name == 'cosine':
    main = optax.cosine_decay_schedule(peak, decay_steps)
  elif s.name == 'linear':
    main = optax.linear_schedule(peak, 0.0, decay_steps)
  elif s.name == 'constant':
    main = optax.constant_schedule(peak)
  else:
    raise ValueError(f"unknown schedule.name {s.name!r}; valid: 'multistep', 'cosine', "
                     "'linear', 'constant'")
  if not warmup:
    return main
  if s.warmup_factor:
    ramp = optax.constant_schedule(peak * s.warmup_factor)
  else:
    ramp = optax.linear_schedule(0.0, peak, warmup)
  return optax.join_schedules([ramp, main], [warmup])


def _decay_mask(params):
  """Weight decay on conv and dense kernels only (not on BN scales/biases or biases)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: optax.Schedule) -> optax.GradientTransformation:
  """SGD with momentum (optionally Nesterov) and coupled (paper) or decoupled weight decay."""
  o = config.optimizer
  if o.name != 'sgd':
    raise ValueError(f"unknown optimizer.name {o.name!r}; valid: 'sgd'")
  if o.sam_rho < 0:
    raise ValueError(f'optimizer.sam_rho must be >= 0 (0 = off), got {o.sam_rho}')
  if o.ema_bn_batches < 0 or (o.ema_bn_batches and not o.ema_decay > 0):
    raise ValueError(f'optimizer.ema_bn_batches={o.ema_bn_batches} needs an EMA '
                     f'(optimizer.ema_decay > 0, got {o.ema_decay}) and must be >= 0')
  mask = None if o.decay_bn_and_bias else _decay_mask
  decay = optax.add_decayed_weights(o.weight_decay, mask) if o.weight_decay else None
  momentum = optax.trace(decay=o.momentum, nesterov=o.nesterov) if o.momentum else None
  parts = [optax.clip_by_global_norm(o.grad_clip_norm) if o.grad_clip_norm else None]
  if o.decoupled_weight_decay:   # p -= lr * (m + wd * p): the decay skips the momentum buffer
    parts += [momentum, decay]
  else:                          # L2 in the gradient, as in the paper and torch.optim.SGD
    parts += [decay, momentum]
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*[p for p in parts if p is not None])
