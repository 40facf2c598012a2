"""`create_input(config, mesh, train=...)`: the config's input, whichever the source and mode."""

import functools
from typing import Iterator

import jax
import ml_collections
from jax.sharding import Mesh

from resnet_jax import parallel
from resnet_jax.data.device_resident import device_resident_input
from resnet_jax.data.fake import fake_input
from resnet_jax.data.global_batches import feed, to_global
from resnet_jax.data.inputs import Batch, EvalInput, Input, TrainInput
from resnet_jax.data.sources import load_split
from resnet_jax.data.splits import DatasetInfo, Split
from resnet_jax.data.transforms import ImageTransform


def decoding_gpus(mesh: Mesh, decoder: str):
  """The grain workers' init for data.decoder='nvimgcodec': deal them out over this process's
  GPUs in the mesh (none on other platforms: nvImageCodec's current device)."""
  if decoder != 'nvimgcodec':
    return None
  from resnet_jax.data import nvimgcodec_decode
  gpus = tuple(dev.local_hardware_id for dev in mesh.local_devices if dev.platform == 'gpu')
  return functools.partial(nvimgcodec_decode.use_gpu, gpus=gpus)


def grain_input(split: Split, d: ml_collections.ConfigDict, mesh: Mesh, *, train: bool,
                batch_size: int, seed: int, process_index: int, process_count: int) -> Input:
  """Batches decoded and augmented by grain on the host, each process reading its own share."""
  from resnet_jax.data import grain_loader   # imports grain (~1 s): only for host pipelines
  transform = ImageTransform.from_config(d, split.channels)
  load = grain_loader.LoadExample(split.records, transform, train=train,
                                  skip_bad_images=d.skip_bad_images)
  info = DatasetInfo(len(split.class_names), split.class_names,
                     (d.image_size, d.image_size, split.channels))
  local_batch = batch_size // process_count
  place = functools.partial(to_global, sharding=parallel.batch_sharding(mesh),
                            process_count=process_count)

  def device_batches(ds, start: int) -> Iterator[Batch]:
    host = grain_loader.host_batches(ds, start=start, num_workers=d.num_workers,
                                     worker_init=decoding_gpus(mesh, d.decoder))
    return feed(host, place, d.prefetch)

  if not train:
    ds = grain_loader.eval_dataset(load, batch_size=local_batch, process_index=process_index,
                                   process_count=process_count)
    return EvalInput(functools.partial(device_batches, ds, 0), info=info,
                     num_examples=len(split))
  ds, steps_per_epoch = grain_loader.train_dataset(
      load, seed=seed, batch_size=local_batch, process_index=process_index,
      process_count=process_count)
  return TrainInput(functools.partial(device_batches, ds), info=info, num_examples=len(split),
                    steps_per_epoch=steps_per_epoch)


def create_input(config: ml_collections.ConfigDict, mesh: Mesh, *, train: bool) -> Input:
  """The train (infinite, resumable) or eval (one pass per iteration) input of a config."""
  d = config.data
  if parallel.mesh_processes(mesh) != jax.process_count():
    raise ValueError('the input needs a mesh over the devices of every process')
  batch_size = config.batch_size if train else config.eval_batch_size
  parallel.check_batch_size(batch_size, mesh, 'batch_size' if train else 'eval_batch_size')
  if d.source == 'fake':
    return fake_input(d, mesh, train=train, batch_size=batch_size, seed=config.seed)
  split = load_split(d, train=train)
  if d.device_resident:
    return device_resident_input(split, d, mesh, train=train, batch_size=batch_size,
                                 seed=config.seed)
  return grain_input(split, d, mesh, train=train, batch_size=batch_size, seed=config.seed,
                     process_index=jax.process_index(), process_count=jax.process_count())
