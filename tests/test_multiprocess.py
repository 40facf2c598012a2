"""Two processes of 4 simulated CPU devices each train like one device with the whole batch.

Both processes run the real entry point (`python -m resnet_jax.main` with a coordinator) on one
shared workdir, each reading its own shard of idx files through the grain pipeline. The test
process then trains one device on the same global batches, the two shards side by side, and
compares its state with the checkpoint the two processes wrote together (two steps, then a second
launch resumed from that checkpoint for the third).
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from resnet_jax import parallel
from resnet_jax.checkpoint import Checkpointer
from resnet_jax.data import grain_loader
from resnet_jax.data.global_batches import to_global
from resnet_jax.data.sources import load_split
from resnet_jax.data.transforms import ImageTransform
from resnet_jax.train.loop import train_and_evaluate
from resnet_jax.train.trainer import Trainer
from resnet_jax.writers import METRICS_FILE
from tests import multiprocess_config
from tests.helpers import write_idx_dataset

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE = Path(multiprocess_config.__file__).relative_to(ROOT)
NUM_PROCESSES = 2
DEVICES_PER_PROCESS = 4
CPU_OPT_LEVEL = 1


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_processes(workdirs: list[Path], data_dir: Path, num_steps: int, scratch: Path,
                  flags: tuple[str, ...] = ()) -> list[tuple[int, str]]:
  """Runs the job as one process per workdir (normally all the same); the exit status and
  output of each. Output goes to files in `scratch`: a full pipe would stall the job.

  Compiled programs are cached in `scratch` and the CPU backend optimises at level 1 only: the
  test's time goes to compiling on a small CPU. (Level 0 is wrong here: with jax 0.10.2 the train
  step on 4 CPU devices compiled at level 0 gives gradients up to 2% off those of 1, 2 or 8
  devices, or of 4 devices at level 1 or above.)
  """
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={DEVICES_PER_PROCESS} '
                       f'--xla_backend_optimization_level={CPU_OPT_LEVEL}',
             JAX_COMPILATION_CACHE_DIR=str(scratch / 'cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  port = free_port()
  logs = [scratch / f'process_{i}.log' for i in range(len(workdirs))]
  procs = []
  try:
    for i, (workdir, log) in enumerate(zip(workdirs, logs)):
      with open(log, 'w') as f:
        procs.append(subprocess.Popen(
            [sys.executable, '-m', 'resnet_jax.main', f'--config={CONFIG_FILE}',
             f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
             f'--config.num_steps={num_steps}', f'--coordinator_address=localhost:{port}',
             f'--num_processes={len(workdirs)}', f'--process_id={i}', '--distributed_timeout=60',
             *flags],
            cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT))
    return [(p.wait(timeout=120), log.read_text()) for p, log in zip(procs, logs)]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def run_job(workdir: Path, data_dir: Path, num_steps: int, scratch: Path,
            flags: tuple[str, ...] = ()) -> list[str]:
  """Runs the job as NUM_PROCESSES processes on one workdir; the output of each."""
  results = run_processes([workdir] * NUM_PROCESSES, data_dir, num_steps, scratch, flags)
  for i, (status, out) in enumerate(results):
    assert status == 0, f'process {i} failed:\n{out[-4000:]}'
  return [out for _, out in results]


def compile_like_processes(jitted, *args):
  """`jitted` compiled for `args` as the processes compile it (CPU_OPT_LEVEL)."""
  return jitted.lower(*args).compile({'xla_backend_optimization_level': CPU_OPT_LEVEL})


def reference_state(config, num_steps: int):
  """`num_steps` steps on one device, each global batch the two processes' shards stacked.

  One device, not the test process's eight: with jax 0.10.2 on some CPUs (an AMD EPYC VM), the
  8-device CPU program of this step gives updates 2e-4 (relative) off those of 1 and 4 devices,
  which agree with each other to float rounding.
  """
  mesh = parallel.create_mesh(1)
  split = load_split(config.data, train=True)
  local_batch = config.batch_size // NUM_PROCESSES
  shards = []
  for p in range(NUM_PROCESSES):
    load = grain_loader.LoadExample(split.records, ImageTransform.from_config(config.data, 1),
                                    train=True, skip_bad_images=False)
    ds, steps_per_epoch = grain_loader.train_dataset(
        load, seed=config.seed, batch_size=local_batch, process_index=p,
        process_count=NUM_PROCESSES)
    shards.append(grain_loader.host_batches(ds))
  trainer = Trainer(config, mesh, num_classes=10, image_shape=(28, 28, 1),
                    steps_per_epoch=steps_per_epoch)
  state = trainer.init_state()
  train_step = None
  for _ in range(num_steps):
    parts = [next(shard) for shard in shards]
    batch = to_global({k: np.concatenate([part[k] for part in parts]) for k in parts[0]},
                      parallel.batch_sharding(mesh), 1)
    # The jitted step itself, whose last argument is the teacher's variables (None: none).
    train_step = train_step or compile_like_processes(trainer.train_step.jitted, state, batch,
                                                      None)
    state, _ = train_step(state, batch, None)
  return state


def test_two_processes_train_like_one_with_all_devices(tmp_path, devices):
  data_dir = write_idx_dataset(tmp_path / 'data', num_train=64, num_test=32)
  workdir = tmp_path / 'run'
  # Two steps, then a resumed run to step 3: multi-process save and restore on a shared workdir.
  first = run_job(workdir, data_dir, num_steps=2, scratch=tmp_path)
  second = run_job(workdir, data_dir, num_steps=3, scratch=tmp_path)

  # Logs, plots and reports come from process 0 only; metrics.jsonl has each step once.
  for outputs in (first, second):
    for report in ('8 x cpu on 2 processes', 'img/s', 'eval/top1', 'finished:'):
      assert report in outputs[0] and report not in outputs[1], report
  steps = [json.loads(line)['step'] for line in (workdir / METRICS_FILE).read_text().splitlines()
           if 'train/loss' in line]
  assert steps == [1, 2, 3], steps
  assert len(list(workdir.glob('events.out.tfevents.*'))) == 2   # one writer per run
  assert (workdir / 'summary.json').exists() and list((workdir / 'plots').glob('*.png'))

  config = multiprocess_config.get_config()
  config.data.data_dir = str(data_dir)
  expected = reference_state(config, num_steps=3)
  ckpt = Checkpointer(workdir)
  assert ckpt.all_steps() == [2, 3]
  restored, data_state = ckpt.restore(expected, config)
  ckpt.close()
  assert int(restored.step) == 3 and data_state == {'epoch': 0, 'position': 3}
  for name in ('params', 'batch_stats', 'opt_state'):
    got, want = jax.device_get((getattr(restored, name), getattr(expected, name)))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, want)


def test_two_processes_distil_from_a_teacher_run(tmp_path, devices):
  """Each process reads the teacher's checkpoint (trained by this process on its 8 devices) onto
  its own first device, and the two-process job distils from it."""
  data_dir = write_idx_dataset(tmp_path / 'data', num_train=64, num_test=32)
  teacher = multiprocess_config.get_config()
  teacher.data.data_dir = str(data_dir)
  teacher.update(num_steps=1, batch_size=24, eval_batch_size=24)
  train_and_evaluate(teacher, tmp_path / 'teacher')
  outputs = run_job(tmp_path / 'student', data_dir, num_steps=2, scratch=tmp_path,
                    flags=(f'--config.distill.teacher={tmp_path / "teacher"}',))
  assert 'teacher' in outputs[0] and 'finished:' in outputs[0]
  info = json.loads((tmp_path / 'student' / 'run_info.json').read_text())
  assert info['processes'] == 2 and info['teacher']['step'] == 1


def test_unreachable_coordinator_fails_in_bounded_time_naming_it(tmp_path):
  address = f'localhost:{free_port()}'   # nobody listens there
  start = time.monotonic()
  r = subprocess.run(
      [sys.executable, '-m', 'resnet_jax.main', f'--config={CONFIG_FILE}', f'--workdir={tmp_path}',
       f'--coordinator_address={address}', '--num_processes=2', '--process_id=1',
       '--distributed_timeout=2'],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True,
      timeout=60)
  assert r.returncode == 1
  assert f'could not reach the coordinator at {address} within 2 s' in r.stderr
  assert time.monotonic() - start < 30


def test_joining_a_job_needs_a_coordinator_or_a_cluster_jax_detects(monkeypatch):
  """A process count or id alone is refused (each process would train alone in one workdir);
  --distributed lets JAX find the cluster (Cloud TPU VM slices) with no address given."""
  for variable in ('SLURM_NTASKS', 'TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS',
                   'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    monkeypatch.delenv(variable, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kwargs: calls.append(kwargs))
  for count, index in ((2, -1), (0, 1)):
    with pytest.raises(ValueError, match='without a coordinator'):
      parallel.initialize_distributed(num_processes=count, process_id=index)
  parallel.initialize_distributed()   # one process: nothing to join
  parallel.initialize_distributed(num_processes=1, process_id=0)   # said outright: the same
  assert calls == []
  parallel.initialize_distributed(detect=True, timeout_s=7)
  assert calls == [{'initialization_timeout': 7}]


def test_a_workdir_that_is_not_shared_is_refused(tmp_path):
  data_dir = write_idx_dataset(tmp_path / 'data', num_train=64, num_test=32)
  workdirs = [tmp_path / f'host{i}' for i in range(NUM_PROCESSES)]   # as on two unshared disks
  for status, out in run_processes(workdirs, data_dir, 1, tmp_path):
    assert status == 1 and 'is not shared: process(es) [1] do not see' in out, out[-2000:]
  assert not any((w / 'checkpoints').exists() for w in workdirs)
  # --mode=eval: every process fails at once, naming the cause (no process left waiting).
  for eval_workdirs, message in (([workdirs[0], tmp_path / 'nowhere'], 'for process(es) [1]'),
                                 (workdirs, 'is not shared: process(es) [1]')):
    for status, out in run_processes(eval_workdirs, data_dir, 1, tmp_path, ('--mode=eval',)):
      assert status == 1 and message in out, out[-2000:]


def test_a_failed_process_of_a_multi_process_job_ends_at_once(monkeypatch, capsys):
  """After an error, a process of a multi-process job leaves through os._exit with its output
  flushed (the interpreter's exit could hang in the CPU client's destructor); a single process
  exits as usual."""
  class Exited(Exception):
    pass

  def fake_exit(code):
    raise Exited(code)

  monkeypatch.setattr(parallel.os, '_exit', fake_exit)
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: True)
  print('error: the reason', file=sys.stderr)
  with pytest.raises(Exited, match='1'):
    parallel.exit_after_error(1)
  assert 'the reason' in capsys.readouterr().err
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: False)
  with pytest.raises(SystemExit, match='1'):
    parallel.exit_after_error(1)
