"""The launch scripts' own logic, with a stand-in `python` on PATH (no training)."""

import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = '''#!/usr/bin/env bash
# Processes 0 and 2 would run for a minute (their pids written to PIDS/); process 1 fails once
# they have started.
for arg in "$@"; do
  case "$arg" in
    --process_id=1)
      for _ in $(seq 100); do [ -f PIDS/0 ] && [ -f PIDS/2 ] && break; sleep 0.1; done
      echo "error: process 1 broke"; exit 3 ;;
    --process_id=*) id=${arg#--process_id=}; echo $$ > PIDS/$id.tmp && mv PIDS/$id.tmp PIDS/$id ;;
  esac
done
exec sleep 60
'''


def test_multiprocess_local_stops_the_others_when_one_fails(tmp_path):
  bin_dir, pids = tmp_path / 'bin', tmp_path / 'pids'
  bin_dir.mkdir()
  pids.mkdir()
  (bin_dir / 'python').write_text(FAKE_PYTHON.replace('PIDS', str(pids)))
  (bin_dir / 'python').chmod(0o755)
  start = time.monotonic()
  r = subprocess.run(
      ['bash', 'launch/multiprocess_local.sh', '3', 'configs/fake.py', str(tmp_path / 'run')],
      cwd=ROOT, env=dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', JAX_PLATFORMS='cpu'),
      capture_output=True, text=True, timeout=50)
  assert r.returncode == 1 and 'a process failed, the others were stopped' in r.stderr
  assert time.monotonic() - start < 20   # not the others' minute
  assert 'process 1 broke' in (tmp_path / 'run' / 'process_1.log').read_text()
  for i in (0, 2):   # started, and gone
    pid = int((pids / str(i)).read_text())
    assert not Path(f'/proc/{pid}').exists() or 'zombie' in Path(f'/proc/{pid}/status').read_text()


SLEEPING_PYTHON = '''#!/usr/bin/env bash
# Writes its process id and CUDA_VISIBLE_DEVICES to PIDS/<process_id>, then sleeps a minute.
for arg in "$@"; do
  case "$arg" in
    --process_id=*) id=${arg#--process_id=}
      echo "$$ ${CUDA_VISIBLE_DEVICES:-}" > PIDS/$id.tmp && mv PIDS/$id.tmp PIDS/$id ;;
  esac
done
exec sleep 60
'''


def start_local_processes(tmp_path, env: dict[str, str], n: int = 3) -> subprocess.Popen:
  bin_dir, pids = tmp_path / 'bin', tmp_path / 'pids'
  bin_dir.mkdir()
  pids.mkdir()
  (bin_dir / 'python').write_text(SLEEPING_PYTHON.replace('PIDS', str(pids)))
  (bin_dir / 'python').chmod(0o755)
  inherited = {k: v for k, v in os.environ.items()
               if k not in ('JAX_PLATFORMS', 'CUDA_VISIBLE_DEVICES')}
  return subprocess.Popen(
      ['bash', 'launch/multiprocess_local.sh', str(n), 'configs/fake.py', str(tmp_path / 'run')],
      cwd=ROOT, env=dict(inherited, PATH=f'{bin_dir}:{os.environ["PATH"]}', **env),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def started(tmp_path, n: int = 3) -> list[list[str]]:
  """Each process's [pid, CUDA_VISIBLE_DEVICES], once all have started."""
  files = [tmp_path / 'pids' / str(i) for i in range(n)]
  for _ in range(200):
    if all(f.exists() for f in files):
      return [f.read_text().split() for f in files]
    time.sleep(0.05)
  raise AssertionError('the processes did not start')


def test_multiprocess_local_passes_a_sigterm_on_and_takes_the_listed_gpus(tmp_path):
  """A SIGTERM to the script (or Ctrl-C) stops every process with SIGTERM, so that each can save
  a checkpoint; process i gets the i-th GPU of CUDA_VISIBLE_DEVICES."""
  proc = start_local_processes(tmp_path, {'CUDA_VISIBLE_DEVICES': '4,5,6'})
  processes = started(tmp_path)
  assert [gpu for _, gpu in processes] == ['4', '5', '6']
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=20) == 143
  for pid, _ in processes:
    assert not Path(f'/proc/{pid}').exists() or 'zombie' in Path(f'/proc/{pid}/status').read_text()


def test_multiprocess_local_refuses_fewer_listed_gpus_than_processes(tmp_path):
  proc = start_local_processes(tmp_path, {'CUDA_VISIBLE_DEVICES': '4,5'})
  _, err = proc.communicate(timeout=20)
  assert proc.returncode == 2 and 'CUDA_VISIBLE_DEVICES=4,5 lists 2 GPUs for 3 processes' in err


def test_each_launch_script_prints_its_header_as_usage():
  for script in ('multiprocess_local.sh', 'tpu_pod.sh'):
    r = subprocess.run(['bash', f'launch/{script}'], cwd=ROOT, capture_output=True, text=True)
    header = (ROOT / 'launch' / script).read_text().split('\nset -euo')[0].splitlines()[1:]
    assert r.returncode == 2
    assert r.stderr.splitlines() == [line[2:] if line.startswith('# ') else line[1:]
                                     for line in header]


def test_tpu_pod_train_passes_each_override_whole_to_the_workers(tmp_path):
  """The command that `gcloud ... ssh --command` runs on the workers, run by a shell with a
  stand-in `python`, gets every argument as it was given."""
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'gcloud').write_text(
      '#!/usr/bin/env bash\nfor a in "$@"; do case "$a" in --command=*) '
      f'printf %s "${{a#--command=}}" > {tmp_path}/command;; esac; done\n')
  (bin_dir / 'python').write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {tmp_path}/args\n')
  for tool in ('gcloud', 'python'):
    (bin_dir / tool).chmod(0o755)
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}')
  override = '--config.data.fake_image_shape=(28, 28, 1)'
  subprocess.run(['bash', 'launch/tpu_pod.sh', 'train', 'pod', 'zone', 'configs/fake.py',
                  '/mnt/runs/a b', override], cwd=ROOT, env=env, check=True)
  command = (tmp_path / 'command').read_text()
  (tmp_path / 'resnet_jax').mkdir()
  subprocess.run(['bash', '-c', command], cwd=tmp_path, env=env, check=True)
  assert (tmp_path / 'args').read_text().splitlines() == [
      '-m', 'resnet_jax.main', '--distributed', '--config=configs/fake.py',
      '--workdir=/mnt/runs/a b', override]
