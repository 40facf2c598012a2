"""Host batches -> global `jax.Array`s sharded over the mesh, prefetched by a background thread."""

import queue
import threading
from typing import Iterator, TypeVar

import jax
import numpy as np
from jax.sharding import NamedSharding

T = TypeVar('T')
_END = object()


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding,
              process_count: int) -> dict[str, jax.Array]:
  """This process's rows of a batch -> global arrays of `process_count` times as many rows."""
  return {k: jax.make_array_from_process_local_data(
              sharding, v, (v.shape[0] * process_count, *v.shape[1:]))
          for k, v in batch.items()}


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
  while not stop.is_set():
    try:
      q.put(item, timeout=0.1)
      return True
    except queue.Full:
      pass
  return False


def prefetch(items: Iterator[T], size: int) -> Iterator[T]:
  """Iterates `items` in a background thread, up to `size` ahead; its errors are raised here.

  Closing this iterator stops the thread and waits for it, so `items` is closed by then.
  """
  if size <= 0:
    yield from items
    return
  q: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def produce():
    try:
      for item in items:
        if not _put(q, (item, None), stop):
          return
      _put(q, (_END, None), stop)
    except BaseException as e:  # handed to the consumer, which re-raises it
      _put(q, (None, e), stop)

  thread = threading.Thread(target=produce, name='data-prefetch', daemon=True)
  thread.start()
  try:
    while True:
      item, error = q.get()
      if error is not None:
        raise error
      if item is _END:
        return
      yield item
  finally:
    stop.set()
    thread.join()   # the producer finishes its item and closes `items` (grain's workers) first
