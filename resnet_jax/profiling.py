"""A JAX profiler trace of a range of training steps, into `workdir/profile`.

    profiler = StepProfiler(workdir, config.profile_steps)   # (first, last); (0, 0) = off
    while step < total:
      profiler.before_step(step)            # `step` steps done, step `step + 1` about to run
      state, metrics = train_step(state, batch)
      step += 1
      profiler.after_step(step, state)      # optional: waits for `state` before stopping
    profiler.close()

Steps are numbered as in metrics.jsonl (the first step is 1): `(first, last)` traces steps first
to last inclusive. Pick `first` after the compilation (e.g. (10, 15)). A run resumed inside the
range traces the rest of it. View with TensorBoard's profile plugin or Perfetto (xprof).
"""

import re
from pathlib import Path
from typing import Any, Iterable

from absl import logging


def parse_profile_steps(profile_steps: tuple[int, int] | list[int]) -> tuple[int, int] | None:
  """(first, last) as ints, None for (0, 0); ValueError for anything else that is not 1 <= f <= l."""
  first, last = (int(s) for s in profile_steps)
  if (first, last) == (0, 0):
    return None
  if not 1 <= first <= last:
    raise ValueError(f'profile_steps={tuple(profile_steps)}: expected (first, last) with '
                     '1 <= first <= last, or (0, 0) for off')
  return first, last


class StepProfiler:
  """Starts `jax.profiler` before step `first` and stops it after step `last`."""

  def __init__(self, workdir: str | Path, profile_steps: tuple[int, int] | list[int], *,
               process_index: int = 0, process_count: int = 1):
    """Traces into `workdir/profile`, or `workdir/profile/process_<i>` in a multi-process job
    (the profiler names a trace after its host and second: processes of one host collide)."""
    self.range = parse_profile_steps(profile_steps)
    self.logdir = Path(workdir) / 'profile'
    if process_count > 1:
      self.logdir /= f'process_{process_index}'
    self.active = False
    self.done = False

  def before_step(self, step: int) -> None:
    """Called with the number of steps done; starts the trace before step `first`."""
    if self.range is None or self.active or self.done:
      return
    first, last = self.range
    if first <= step + 1 <= last:
      import jax
      self.logdir.mkdir(parents=True, exist_ok=True)
      jax.profiler.start_trace(str(self.logdir))
      self.active = True
      logging.info('profiler: tracing steps %d-%d into %s', step + 1, last, self.logdir)

  def after_step(self, step: int, wait_for: Any = None) -> None:
    """Called with the number of steps done; stops after step `last`, once `wait_for` is ready."""
    if self.active and step >= self.range[1]:
      self._stop(wait_for)

  def close(self) -> None:
    """Stops a trace still running (a run that ended or failed inside the range)."""
    if self.active:
      self._stop(None)

  def _stop(self, wait_for: Any) -> None:
    import jax
    if wait_for is not None:
      jax.block_until_ready(wait_for)
    jax.profiler.stop_trace()
    self.active, self.done = False, True
    logging.info('profiler: trace written to %s', self.logdir)


# Kernel categories by kernel name, first match wins (cuDNN names its conv kernels fprop, dgrad
# and wgrad; XLA turns 1x1 convs into cuBLAS GEMMs, 'nvjet' on Hopper; XLA's own kernels are
# fusions named after their root op).
_CATEGORIES = (
    ('conv weight-grad', ('wgrad',)),
    ('conv data-grad', ('dgrad',)),
    ('conv forward', ('fprop',)),
    ('conv (other cuDNN)', ('implicitgemmconvolution', 'convolve', 'conv2d')),
    ('GEMM (1x1 convs, dense)', ('nvjet', 'gemm', 'cublas', 'cutlass')),
    ('max-pool, scatter', ('select_and_scatter', 'reduce_window', 'scatter')),
    ('reduction fusions (BN statistics)', ('reduce', 'reduction')),
    ('copies and transposes', ('copy', 'transpose', 'memcpy', 'memset')),
    ('elementwise fusions', ('fusion', 'triton')),
)


def kernel_category(kernel: str) -> str:
  """The category of a GPU kernel, from its name."""
  name = kernel.lower()
  for category, keys in _CATEGORIES:
    if any(k in name for k in keys):
      return category
  return 'other'


def first_gpu(planes: Iterable[Any]) -> Any | None:
  """The trace plane of the lowest-numbered GPU (`/device:GPU:0`), or None. Every GPU runs the
  same program, so one GPU's kernels are the time per step; all of them would count it N times."""
  gpus = [p for p in planes if re.fullmatch(r'/device:GPU:\d+', p.name)]
  return min(gpus, key=lambda p: int(p.name.rsplit(':', 1)[1]), default=None)


def device_kernel_times(logdir: str | Path) -> dict[str, list[int]]:
  """{kernel name: [total ns, launches]} over the streams of the first GPU in the newest trace."""
  from jax.profiler import ProfileData
  traces = sorted(Path(logdir).glob('**/*.xplane.pb'), key=lambda p: p.stat().st_mtime)
  if not traces:
    raise FileNotFoundError(f'no *.xplane.pb trace under {logdir}')
  times: dict[str, list[int]] = {}
  plane = first_gpu(ProfileData.from_file(str(traces[-1])).planes)
  if plane is not None:
    for line in plane.lines:
      if not line.name.startswith('Stream'):
        continue
      for event in line.events:
        entry = times.setdefault(event.name, [0, 0])
        entry[0] += int(event.duration_ns)
        entry[1] += 1
  return times


def kernel_breakdown(logdir: str | Path, num_steps: int, step_ms: float, top: int = 25) -> str:
  """A text table of device time per step: by category, then the `top` kernels by time."""
  times = device_kernel_times(logdir)
  if not times:
    return 'no GPU kernels in the trace (the breakdown needs a GPU)'
  by_category: dict[str, float] = {}
  by_kernel: dict[str, list[float]] = {}
  for kernel, (ns, count) in times.items():
    category = kernel_category(kernel)
    by_category[category] = by_category.get(category, 0.0) + ns / 1e6 / num_steps
    entry = by_kernel.setdefault(f'[{category}] {kernel[:90]}', [0.0, 0.0])
    entry[0] += ns / 1e6 / num_steps
    entry[1] += count / num_steps
  busy = sum(by_category.values())
  lines = [f'device busy {busy:.2f} ms of a {step_ms:.2f} ms step '
           f'({100 * busy / step_ms:.0f}%), per step:']
  for category, ms in sorted(by_category.items(), key=lambda kv: -kv[1]):
    lines.append(f'  {ms:8.2f} ms  {100 * ms / busy:5.1f}%  {category}')
  lines.append(f'top {top} kernels (ms per step, launches per step):')
  for name, (ms, count) in sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:top]:
    lines.append(f'  {ms:8.3f} ms  {count:5.0f}x  {name}')
  return '\n'.join(lines)
