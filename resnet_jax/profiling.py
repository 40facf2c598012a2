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

from pathlib import Path
from typing import Any

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

  def __init__(self, workdir: str | Path, profile_steps: tuple[int, int] | list[int]):
    self.range = parse_profile_steps(profile_steps)
    self.logdir = Path(workdir) / 'profile'
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
