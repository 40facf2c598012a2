"""The whole side-by-side comparison of docs/benchmarks.md in one call, on one GPU.

    python benchmarks/compare.py --out DIR [--only jax_rn50,torch_rn50_compile]

Runs each case in its own process (so that one framework's memory pool never starves the
other), saves every case's JSON and log under --out, and prints a Markdown table last. The
PyTorch cases need torch/torchvision (present on the GPU hosts, never a resnet_jax dependency).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

BENCH = [sys.executable, '-m', 'resnet_jax.benchmark']
TORCH = [sys.executable, 'benchmarks/torch_peers.py']
RN50 = ['--config=configs/imagenet.py:resnet50,modern', '--config.batch_size=256']
C56 = ['--config=configs/cifar10.py:resnet56', '--config.dtype=bfloat16',
       '--config.label_smoothing=0.1', '--num_classes=10']

CASES = {
    'jax_rn50': BENCH + RN50,
    'torch_rn50_eager': TORCH + ['--model=resnet50', '--mode=eager', '--batch=256'],
    'torch_rn50_compile': TORCH + ['--model=resnet50', '--mode=compile', '--batch=256'],
    'jax_c56_b128': BENCH + C56 + ['--config.batch_size=128', '--steps=100'],
    'torch_c56_b128_eager': TORCH + ['--model=cifar_resnet56', '--mode=eager', '--batch=128',
                                     '--steps=100'],
    'jax_c56_b512': BENCH + C56 + ['--config.batch_size=512', '--steps=50'],
    'torch_c56_b512_eager': TORCH + ['--model=cifar_resnet56', '--mode=eager', '--batch=512',
                                     '--steps=50'],
}


def run_case(name: str, cmd: list[str], out: Path) -> dict | None:
  proc = subprocess.run(cmd, capture_output=True, text=True)
  (out / f'{name}.log').write_text(proc.stdout + '\n' + proc.stderr)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('{')]
  if proc.returncode or not lines:
    print(f'{name}: failed (exit {proc.returncode}); see {out / name}.log', flush=True)
    return None
  result = json.loads(lines[-1])
  (out / f'{name}.json').write_text(json.dumps(result, indent=1))
  print(f'{name}: {result["images_per_sec"]:,.0f} images/s', flush=True)
  return result


def table(results: dict[str, dict]) -> str:
  rows = ['| case | images/s | step ms | first step s | peak GiB |', '|---|---:|---:|---:|---:|']
  for name, r in results.items():
    mem = '' if r.get('peak_memory_gib') is None else f"{r['peak_memory_gib']:.1f}"
    rows.append(f"| {name} | {r['images_per_sec']:,.0f} | {r['step_ms']:.2f} | "
                f"{r['compile_s']:.1f} | {mem} |")
  ratios = [('jax_rn50', 'torch_rn50_compile'), ('jax_rn50', 'torch_rn50_eager'),
            ('jax_c56_b128', 'torch_c56_b128_eager'), ('jax_c56_b512', 'torch_c56_b512_eager')]
  for a, b in ratios:
    if a in results and b in results:
      rows.append(f"\n{a} / {b}: {results[a]['images_per_sec'] / results[b]['images_per_sec']:.2f}x")
  return '\n'.join(rows)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--out', type=Path, required=True)
  p.add_argument('--only', default='', help='comma-separated case names (default: all)')
  a = p.parse_args()
  a.out.mkdir(parents=True, exist_ok=True)
  names = a.only.split(',') if a.only else list(CASES)
  unknown = set(names) - set(CASES)
  if unknown:
    p.error(f'unknown cases {sorted(unknown)}; valid: {list(CASES)}')
  results = {}
  for name in names:
    r = run_case(name, CASES[name], a.out)
    if r:
      results[name] = r
  report = table(results)
  (a.out / 'table.md').write_text(report + '\n')
  print(report)
  return 0 if len(results) == len(names) else 1   # a failed case fails the run


if __name__ == '__main__':
  sys.exit(main())
