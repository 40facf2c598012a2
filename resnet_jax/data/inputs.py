"""The `Input` objects that `create_input` returns (see docs/architecture.md, "Data")."""

from typing import Any, Callable, Iterator

import jax

from resnet_jax.data.splits import DatasetInfo

Batch = dict[str, jax.Array]


class EvalInput:
  """Each iteration is one pass over the eval split (last batch padded, `mask` False there)."""

  def __init__(self, one_pass: Callable[[], Iterator[Batch]], *, info: DatasetInfo,
               num_examples: int):
    self._one_pass = one_pass
    self.info = info
    self.num_examples = num_examples

  def __iter__(self) -> Iterator[Batch]:
    return self._one_pass()


class TrainInput:
  """Infinite train batches; `get_state`/`set_state` resume the exact same batch sequence.

  `batches(step)` gives the stream from global step `step` on. The state counts the batches
  handed out by the latest iterator; use one iterator at a time.
  """

  def __init__(self, batches: Callable[[int], Iterator[Batch]], *, info: DatasetInfo,
               num_examples: int, steps_per_epoch: int):
    self._batches = batches
    self._step = 0
    self.info = info
    self.num_examples = num_examples
    self.steps_per_epoch = steps_per_epoch

  def __iter__(self) -> Iterator[Batch]:
    for batch in self._batches(self._step):
      self._step += 1
      yield batch

  def get_state(self) -> dict[str, int]:
    epoch, position = divmod(self._step, self.steps_per_epoch)
    return {'epoch': epoch, 'position': position}

  def set_state(self, state: dict[str, Any]) -> None:
    """Continues after the batches counted by `state` (from `get_state`) at the next `iter()`."""
    epoch, position = int(state['epoch']), int(state['position'])
    if epoch < 0 or not 0 <= position < self.steps_per_epoch:
      raise ValueError(f'data state {state} does not fit this input ({self.steps_per_epoch} '
                       'steps per epoch)')
    self._step = epoch * self.steps_per_epoch + position


Input = TrainInput | EvalInput
