"""A finished (or running) run's model read back from its workdir (`restore_trained`, for
predict and for distillation), and the distillation teacher of a config (`load_teacher`)."""

import copy
import dataclasses
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging

from resnet_jax import parallel
from resnet_jax.checkpoint import Checkpointer
from resnet_jax.config_base import read_saved_config
from resnet_jax.models.summary import count_params
from resnet_jax.train import distill
from resnet_jax.train.state import eval_fields
from resnet_jax.train.trainer import Trainer


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """A finished (or running) training run's model and its eval variables, on the host."""
  config: ml_collections.ConfigDict   # the run's config.json, on this version's schema
  model: Any
  variables: dict[str, Any]           # the EMA weights where the run kept an EMA
  step: int
  num_classes: int
  channels: int


def restore_trained(workdir: str | Path, checkpoint: str = 'latest') -> TrainedModel:
  """The model of a training workdir at its latest or best checkpoint; FileNotFoundError naming
  what is missing where `workdir` is not a run with a checkpoint."""
  workdir = Path(workdir)
  config_file = workdir / 'config.json'
  if not config_file.is_file():
    raise FileNotFoundError(f'{config_file} not found: {workdir} is not a training run directory')
  config = read_saved_config(config_file)
  ckpt = Checkpointer(workdir, keep=config.keep_checkpoints,
                      keep_best=config.keep_best_checkpoints, best_metric=config.best_metric,
                      create=False)
  try:
    step = ckpt.chosen_step(checkpoint)
    params = ckpt.saved_arrays(step)['params']
    num_classes, channels = (params['head']['kernel'].shape[-1],
                             params['stem_conv']['kernel'].shape[-2])
    size = config.data.image_size
    # On one local device (each process of a multi-process job reads its own copy), whose
    # batches any batch size fits: the run's batch sizes need not divide this host's devices.
    one_device = copy.deepcopy(config)
    one_device.update(batch_size=1, eval_batch_size=1)
    trainer = Trainer(one_device, parallel.local_mesh(1), num_classes=num_classes,
                      image_shape=(size, size, channels), steps_per_epoch=None)
    variables = restore_eval_variables(ckpt, trainer.abstract_state, config, step)
  finally:
    ckpt.close()
  return TrainedModel(config, trainer.model, jax.device_get(variables), step, num_classes,
                      channels)


def restore_eval_variables(ckpt: Checkpointer, abstract_state: Any,
                           config: ml_collections.ConfigDict, step: int) -> dict[str, Any]:
  """The eval weights (the EMA ones where the run kept an EMA) of checkpoint `step`, onto the
  shardings of `abstract_state`: no optimizer state or other weights read into memory."""
  fields = eval_fields(abstract_state)
  saved = ckpt.restore_fields(abstract_state, list(fields.values()), config, step)
  return {name: saved[field] for name, field in fields.items()}


def check_readable_by_every_process(path: Path) -> None:
  """In a multi-process job, refuses on every process a file that some process cannot see
  (rather than leaving the others waiting for it in orbax's barriers)."""
  if jax.process_count() == 1:
    return
  blind = parallel.processes_without(path.is_file())
  if blind:
    raise FileNotFoundError(f'{path}: process(es) {blind} cannot see it; a distillation '
                            "teacher's workdir must be on a filesystem that every process reads")


def load_teacher(config: ml_collections.ConfigDict, *, num_classes: int,
                 channels: int) -> TrainedModel | None:
  """The distillation teacher of `config` (`distill.teacher`), checked against the data it is to
  teach on; None where the config has none."""
  if not config.distill.teacher:
    return None
  distill.check_distill(config)
  check_readable_by_every_process(Path(config.distill.teacher) / 'config.json')
  teacher = restore_trained(config.distill.teacher, config.distill.checkpoint)
  distill.check_teacher(config, teacher.config, num_classes=num_classes,
                        teacher_classes=teacher.num_classes, channels=channels,
                        teacher_channels=teacher.channels)
  logging.info('distilling from %s (step %d, %s parameters)', config.distill.teacher,
               teacher.step, f'{count_params(teacher.variables["params"]):,}')
  return teacher


def with_teacher(trainer: Trainer) -> Trainer:
  """`trainer` with its config's distillation teacher loaded (itself where there is none)."""
  teacher = load_teacher(trainer.config, num_classes=trainer.num_classes,
                         channels=trainer.image_shape[-1])
  if teacher is None:
    return trainer
  return Trainer(trainer.config, trainer.mesh, num_classes=trainer.num_classes,
                 image_shape=trainer.image_shape, steps_per_epoch=trainer.steps_per_epoch,
                 teacher=teacher)
