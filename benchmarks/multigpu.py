"""Issue 8 on one host with several GPUs: one process per GPU trains like one process on all of
them, and training throughput scales from 1 to 2 to 4 GPUs.

    python benchmarks/multigpu.py --out DIR                 # both parts, every visible GPU
    python benchmarks/multigpu.py --out DIR --only scaling --warmup 5 --windows 3 --steps 20
    python benchmarks/multigpu.py --out DIR --only equivalence --platform cpu --gpus 2   # smoke

Equivalence: N processes, process i seeing only GPU i (CUDA_VISIBLE_DEVICES=i, coordinator on
localhost), train a few steps of small_resnet on fixed fake data (float32, full-precision
matmuls); one process with all N GPUs trains the same steps on the same global batches. The
largest absolute difference of the final params and BN statistics is printed with PASS or FAIL
against --tol. Scaling: `python -m resnet_jax.benchmark` of ResNet-50 (the modern recipe,
bfloat16) at 256 images per GPU on the first 1, 2, 4 GPUs, each in its own process; images/s,
per-GPU throughput and the efficiency against one GPU (the bar: 95% or better). Logs, JSON and
Markdown land under --out. With default options the whole script takes about 5-7 minutes on
4 H100/H200.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCALING_CONFIG = 'configs/imagenet.py:resnet50,modern'
EQUIVALENCE_BATCH_PER_DEVICE = 32
RUN_TIMEOUT_S = 300


# --- equivalence: a worker process --------------------------------------------------------------

def train_params(num_steps: int, batch_size: int) -> dict[str, np.ndarray]:
  """Params and BN statistics after `num_steps` steps on fake data, over every process's devices."""
  import jax

  from resnet_jax import data, parallel
  from resnet_jax.config_base import base_config
  from resnet_jax.train.trainer import Trainer

  jax.config.update('jax_default_matmul_precision', 'highest')   # no TF32: compare float32
  c = base_config()
  c.data.update(source='fake', fake_image_shape=(32, 32, 3), image_size=32, fake_num_classes=10,
                fake_num_examples=64 * batch_size)
  c.update(batch_size=batch_size, eval_batch_size=batch_size, num_steps=num_steps)
  c.optimizer.lr_batch_size = batch_size
  c.schedule.name = 'constant'
  mesh = parallel.create_mesh()
  train_input = data.create_input(c, mesh, train=True)
  trainer = Trainer(c, mesh, num_classes=10, image_shape=(32, 32, 3),
                    steps_per_epoch=train_input.steps_per_epoch)
  state = trainer.init_state()
  for _, batch in zip(range(num_steps), train_input):
    state, _ = trainer.train_step(state, batch)
  leaves = jax.tree_util.tree_leaves_with_path({'params': state.params,
                                                'batch_stats': state.batch_stats})
  return {jax.tree_util.keystr(path): np.asarray(jax.device_get(leaf)) for path, leaf in leaves}


def worker(a: argparse.Namespace) -> None:
  from resnet_jax import parallel
  parallel.initialize_distributed(a.coordinator, a.num_processes, a.process_id, timeout_s=120)
  import jax
  params = train_params(a.equivalence_steps, a.batch_size)
  if jax.process_index() == 0:
    np.savez(a.params_out, **params)


# --- equivalence: the launcher ------------------------------------------------------------------

def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def device_env(platform: str, devices: list[int]) -> dict[str, str]:
  """The environment of a process that sees `devices` (GPU ids; on CPU only their number)."""
  if platform == 'cpu':
    return dict(os.environ, JAX_PLATFORMS='cpu',
                XLA_FLAGS=f'--xla_force_host_platform_device_count={len(devices)}')
  return dict(os.environ, CUDA_VISIBLE_DEVICES=','.join(map(str, devices)))


def run_logged(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
  with open(log, 'w') as f:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


def wait_all(procs: list[subprocess.Popen], logs: list[Path]) -> None:
  try:
    for p, log in zip(procs, logs):
      if p.wait(timeout=RUN_TIMEOUT_S):
        raise RuntimeError(f'exit {p.returncode}; see {log}')
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()


def train_in_processes(a: argparse.Namespace, num_processes: int, tag: str) -> dict:
  """Trains over a.gpus devices split among `num_processes` processes; returns the params."""
  per_process = a.gpus // num_processes
  port, out = free_port(), a.out / f'params_{tag}.npz'
  procs, logs = [], []
  for i in range(num_processes):
    cmd = [sys.executable, __file__, '--worker', f'--process_id={i}',
           f'--num_processes={num_processes}', f'--params_out={out}',
           f'--equivalence_steps={a.equivalence_steps}',
           f'--batch_size={EQUIVALENCE_BATCH_PER_DEVICE * a.gpus}']
    if num_processes > 1:
      cmd.append(f'--coordinator=localhost:{port}')
    logs.append(a.out / f'equivalence_{tag}_process_{i}.log')
    devices = list(range(i * per_process, (i + 1) * per_process))
    procs.append(run_logged(cmd, device_env(a.platform, devices), logs[-1]))
  wait_all(procs, logs)
  with np.load(out) as params:
    return dict(params)


def equivalence(a: argparse.Namespace) -> bool:
  print(f'equivalence: {a.gpus} processes x 1 {a.platform} device vs 1 process x {a.gpus}',
        flush=True)
  split = train_in_processes(a, a.gpus, f'{a.gpus}x1')
  whole = train_in_processes(a, 1, f'1x{a.gpus}')
  assert split.keys() == whole.keys()
  diff = max(float(np.max(np.abs(split[k] - whole[k]))) for k in split)
  ok = diff <= a.tol
  report = (f'{a.equivalence_steps} steps of small_resnet, global batch '
            f'{EQUIVALENCE_BATCH_PER_DEVICE * a.gpus}: {a.gpus} processes x 1 {a.platform} '
            f'device vs 1 process x {a.gpus}: max abs diff of params and BN statistics '
            f'{diff:.3g} (tolerance {a.tol:g}): {"PASS" if ok else "FAIL"}')
  (a.out / 'equivalence.md').write_text(report + '\n')
  print(report, flush=True)
  return ok


# --- scaling ------------------------------------------------------------------------------------

def benchmark(a: argparse.Namespace, n: int) -> dict:
  """`resnet_jax.benchmark` on the first `n` GPUs at `a.per_gpu_batch` images per GPU."""
  cmd = [sys.executable, '-m', 'resnet_jax.benchmark', f'--config={SCALING_CONFIG}',
         f'--config.batch_size={a.per_gpu_batch * n}', f'--devices={n}',
         f'--warmup={a.warmup}', f'--windows={a.windows}', f'--steps={a.steps}']
  log = a.out / f'scaling_{n}gpu.log'
  wait_all([run_logged(cmd, device_env(a.platform, list(range(n))), log)], [log])
  lines = [l for l in log.read_text().splitlines() if l.startswith('{')]
  if not lines:
    raise RuntimeError(f'no result line in {log}')
  return json.loads(lines[-1])


def scaling_table(results: dict[int, dict]) -> str:
  base = results[1]['images_per_sec']
  rows = ['| GPUs | global batch | images/s | images/s per GPU | scaling efficiency |',
          '|---:|---:|---:|---:|---:|']
  for n, r in results.items():
    per_gpu = r['images_per_sec'] / n
    rows.append(f"| {n} | {r['global_batch']} | {r['images_per_sec']:,.0f} | {per_gpu:,.0f} | "
                f'{100 * per_gpu / base:.1f}% |')
  r = results[1]
  return (f"ResNet-50 ({SCALING_CONFIG}, {r['dtype']}), synthetic data, "
          f"{r['device_kind']}, jax {r['jax']}\n\n" + '\n'.join(rows) + '\n')


def scaling(a: argparse.Namespace) -> None:
  results = {}
  for n in (1, 2, 4):
    if n <= a.gpus:
      print(f'scaling: {n} GPU(s), batch {a.per_gpu_batch * n}', flush=True)
      results[n] = benchmark(a, n)
  (a.out / 'scaling.json').write_text(json.dumps(results, indent=1))
  table = scaling_table(results)
  (a.out / 'scaling.md').write_text(table)
  print(table, flush=True)


# --- command line -------------------------------------------------------------------------------

def visible_gpus() -> int:
  if os.environ.get('CUDA_VISIBLE_DEVICES'):
    return len(os.environ['CUDA_VISIBLE_DEVICES'].split(','))
  try:
    out = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return 0
  return sum(line.startswith('GPU ') for line in out.splitlines())


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', type=Path, help='Directory for logs, JSON and Markdown.')
  p.add_argument('--only', choices=('equivalence', 'scaling'), help='Run one part only.')
  p.add_argument('--platform', choices=('gpu', 'cpu'), default='gpu',
                 help='cpu: simulated CPU devices, to try the equivalence part without GPUs.')
  p.add_argument('--gpus', type=int, default=0, help='Devices to use (0 = every visible GPU).')
  p.add_argument('--tol', type=float, default=1e-4, help='Equivalence: largest abs difference.')
  p.add_argument('--equivalence_steps', type=int, default=5)
  p.add_argument('--per_gpu_batch', type=int, default=256)
  p.add_argument('--warmup', type=int, default=5, help='Scaling: untimed steps after compiling.')
  p.add_argument('--windows', type=int, default=3, help='Scaling: timed windows (median).')
  p.add_argument('--steps', type=int, default=20, help='Scaling: steps per timed window.')
  p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--coordinator', default='', help=argparse.SUPPRESS)
  p.add_argument('--num_processes', type=int, default=1, help=argparse.SUPPRESS)
  p.add_argument('--process_id', type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument('--params_out', type=Path, help=argparse.SUPPRESS)
  p.add_argument('--batch_size', type=int, default=0, help=argparse.SUPPRESS)
  a = p.parse_args()
  if a.worker:
    return a
  if a.out is None:
    p.error('--out is required')
  a.gpus = a.gpus or (visible_gpus() if a.platform == 'gpu' else 2)
  if a.gpus < 2 and a.only != 'scaling':
    p.error(f'the equivalence part needs 2 or more devices, found {a.gpus} (use --gpus)')
  if a.gpus < 1:
    p.error('no GPU visible')
  if a.platform == 'cpu' and a.only != 'equivalence':
    p.error('--platform cpu runs the equivalence part only (add --only equivalence)')
  return a


def main() -> int:
  a = parse_args()
  if a.worker:
    sys.path.insert(0, str(ROOT))   # run as a script: the package is beside benchmarks/
    worker(a)
    return 0
  a.out.mkdir(parents=True, exist_ok=True)
  ok = True
  if a.only != 'scaling':
    ok = equivalence(a)
  if a.only != 'equivalence':
    scaling(a)
  return 0 if ok else 1


if __name__ == '__main__':
  sys.exit(main())
