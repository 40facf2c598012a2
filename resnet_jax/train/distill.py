"""Knowledge distillation (Hinton, Vinyals and Dean, 2015): a trained run's model as teacher.

With `distill.teacher` set to a training workdir, each train step also runs the teacher (eval
mode, its EMA weights where it kept them) on the same augmented, mixed images, and the loss is

    (1 - weight) * cross-entropy(labels) + weight * T^2 * KL(teacher_T || student_T)

where `_T` is the softmax at temperature T (`distill.temperature`); the T^2 keeps the soft
term's gradients at the scale of the hard one's. Not in He et al.: a way to train a small net
(e.g. within a parameter budget) past what its own labels teach it. Only the student is saved.
"""

import jax
import jax.numpy as jnp
import ml_collections

# What the teacher must share with the student: it sees the student's preprocessed images.
SHARED_DATA_FIELDS = ('image_size', 'upscale', 'mean', 'std')


def distillation_loss(logits: jax.Array, teacher_logits: jax.Array,
                      temperature: float) -> jax.Array:
  """Per-example T^2 * KL(softmax(teacher / T) || softmax(student / T)), in float32."""
  t = jnp.float32(temperature)
  student = jax.nn.log_softmax(logits.astype(jnp.float32) / t)
  teacher = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / t)
  return t * t * jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1)


def check_distill(config: ml_collections.ConfigDict) -> None:
  """Refuses a weight, temperature or checkpoint that cannot be used, naming the key."""
  d = config.distill
  if not d.teacher:
    return
  if not 0 < d.weight <= 1:
    raise ValueError(f'distill.weight={d.weight} must be in (0, 1]')
  if d.temperature <= 0:
    raise ValueError(f'distill.temperature={d.temperature} must be positive')
  if d.checkpoint not in ('latest', 'best'):
    raise ValueError(f"distill.checkpoint must be 'latest' or 'best', got {d.checkpoint!r}")


def check_teacher(config: ml_collections.ConfigDict, teacher: ml_collections.ConfigDict, *,
                  num_classes: int, teacher_classes: int, channels: int,
                  teacher_channels: int) -> None:
  """A teacher whose outputs or inputs do not match the student's is an error naming why."""
  where = f'distill.teacher={config.distill.teacher}'
  if teacher_classes != num_classes:
    raise ValueError(f'{where}: the teacher has {teacher_classes} classes, the data {num_classes}')
  if teacher_channels != channels:
    raise ValueError(f'{where}: the teacher takes {teacher_channels}-channel images, the data '
                     f'has {channels}')
  for key in SHARED_DATA_FIELDS:
    ours, theirs = config.data[key], teacher.data[key]   # both on this version's schema
    if ours != theirs:
      raise ValueError(f'{where}: data.{key} is {theirs} for the teacher, {ours} here; the '
                       'teacher must see the images it was trained on')
