"""Device mesh, shardings and multi-process start-up.

The step is `jax.jit` over a one-axis `Mesh` named 'data'. The global batch is sharded along that
axis and everything else (params, BN statistics, optimizer state) is replicated, so XLA inserts the
gradient all-reduce and the cross-device BatchNorm reductions itself. The same program runs on
one CPU, eight GPUs or a TPU pod; only the mesh changes.
"""

import os
import socket
import sys
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def create_mesh(num_devices: int = 0) -> Mesh:
  """A 1-D mesh over the first `num_devices` devices (0 = all, over every process)."""
  devices = jax.devices()
  if num_devices:
    if jax.process_count() > 1:
      raise ValueError('--devices is for single-process runs; use every device of a multi-host job')
    if num_devices > len(devices):
      raise ValueError(f'asked for {num_devices} devices but only {len(devices)} are present')
    devices = devices[:num_devices]
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def local_mesh(num_devices: int) -> Mesh:
  """A 1-D mesh over this process's first `num_devices` devices, in any job."""
  devices = jax.local_devices()
  if not 1 <= num_devices <= len(devices):
    raise ValueError(f'asked for {num_devices} local devices; this process has {len(devices)}')
  return Mesh(np.asarray(devices[:num_devices]), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def abstract(tree: Any) -> Any:
  """Shapes, dtypes and shardings of a pytree of arrays (or specs), without the data."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def mesh_processes(mesh: Mesh) -> int:
  """How many processes own the devices of `mesh` (feed its batches)."""
  return len({d.process_index for d in mesh.devices.flat})


def processes_without(this_one_has_it: bool) -> list[int]:
  """The indices of the processes for which `this_one_has_it` is False (every process calls it)."""
  return np.flatnonzero(~multihost_utils.process_allgather(np.bool_(this_one_has_it))).tolist()


def check_batch_size(batch_size: int, mesh: Mesh, what: str = 'batch_size') -> None:
  """Refuses a global batch that the devices (and processes) cannot share evenly."""
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(
        f'{what}={batch_size} is not divisible by the number of devices ({n}); '
        f'use a multiple of {n}')
  processes = mesh_processes(mesh)
  if batch_size % processes:
    raise ValueError(
        f'{what}={batch_size} is not divisible by the number of processes ({processes})')


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a host pytree on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


def finish_on_cpu_meshes(tree: Any, mesh: Mesh) -> Any:
  """Waits for `tree` where the mesh has several CPU devices; elsewhere returns at once.

  XLA's CPU runtime can deadlock when two independent programs with collectives overlap across
  devices: a device blocked in one program's all-reduce holds a worker thread that another
  device needs to reach it (seen as a 40 s rendezvous timeout and an abort, with 8 simulated
  devices on 2 cores, in the evaluation of the EMA and the live weights, and in consecutive
  steps of EMA BN statistics). GPUs run each device's programs in order on its stream and need
  no wait.
  """
  if mesh.devices.size > 1 and mesh.devices.flat[0].platform == 'cpu':
    jax.block_until_ready(tree)
  return tree


def is_main_process() -> bool:
  return jax.process_index() == 0


def initialize_distributed(coordinator: str = '', num_processes: int = 0, process_id: int = -1,
                           timeout_s: int = 300, detect: bool = False) -> None:
  """Starts JAX's multi-process runtime when the job has several processes.

  JAX finds the cluster itself under SLURM (several tasks), on GKE TPU slices and multislice
  jobs (their environment variables), and with `detect` anywhere it knows (Cloud TPU VM slices,
  found through the metadata server: launch/tpu_pod.sh passes --distributed). Elsewhere the
  coordinator, process count and process id come from the arguments or from
  JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. A single process needs none of
  this and nothing is done.
  """
  coordinator = coordinator or os.environ.get('JAX_COORDINATOR_ADDRESS', '')
  num_processes = num_processes or int(os.environ.get('JAX_NUM_PROCESSES', '0'))
  if process_id < 0:
    process_id = int(os.environ.get('JAX_PROCESS_ID', '-1'))
  managed = 'SLURM_NTASKS' in os.environ and int(os.environ['SLURM_NTASKS']) > 1
  managed |= 'TPU_WORKER_HOSTNAMES' in os.environ or 'MEGASCALE_COORDINATOR_ADDRESS' in os.environ
  managed |= detect
  if not coordinator and not managed:
    if num_processes > 1 or process_id > 0:   # else each would train alone in one workdir
      raise ValueError(f'a process count ({num_processes}) or id ({process_id}) without a '
                       'coordinator: give --coordinator_address (or JAX_COORDINATOR_ADDRESS), '
                       'or --distributed where JAX detects the cluster')
    return
  kwargs = {}
  if coordinator:
    if num_processes <= 0 or process_id < 0:
      raise ValueError('a coordinator address needs the process count and this process id '
                       '(--num_processes/--process_id or JAX_NUM_PROCESSES/JAX_PROCESS_ID)')
    kwargs = dict(coordinator_address=coordinator, num_processes=num_processes,
                  process_id=process_id)
    if process_id != 0:   # process 0 starts the coordinator; the others must reach it
      wait_for_coordinator(coordinator, timeout_s)
  logging.info('jax.distributed.initialize(%s)', kwargs or 'auto-detected cluster')
  try:
    jax.distributed.initialize(initialization_timeout=timeout_s, **kwargs)
  except Exception as e:  # JAX raises several types here; all mean the same to the user.
    where = coordinator or 'the auto-detected coordinator'
    raise ConnectionError(f'could not join the distributed job at {where} within {timeout_s} s: '
                       f'{e}') from e


def exit_after_error(code: int) -> None:
  """Ends a process whose run failed. In a multi-process job it ends at once, its output
  flushed: the interpreter's own exit could hang there, in the destructor of JAX's CPU client
  joining a thread that waits on a process already gone (seen in 1 of 42 failed two-process
  evaluations on a loaded 2-core machine, jax 0.10.2). Checkpoints are already written (the loop
  waits for them before an error leaves it) and metrics are flushed line by line."""
  if jax.distributed.is_initialized():
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
  """Returns once `address` (host:port) accepts connections; else ConnectionError naming it.

  JAX aborts the process without a Python error when it cannot reach the coordinator, so the
  address is checked here first.
  """
  host, _, port = address.rpartition(':')
  if not host or not port.isdigit():
    raise ValueError(f'the coordinator address must be host:port, not {address!r}')
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host.strip('[]'), int(port)), timeout=5):
        return
    except OSError as e:
      if time.monotonic() >= deadline:
        raise ConnectionError(f'could not reach the coordinator at {address} within {timeout_s} '
                              f's ({e}); is process 0 running there?') from e
      time.sleep(0.5)
