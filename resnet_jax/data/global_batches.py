"""Host batches -> global `jax.Array`s sharded over the mesh, fed by two background threads."""

import queue
import threading
from typing import Callable, Iterator, TypeVar

import jax
from jax.sharding import NamedSharding

T = TypeVar('T')
U = TypeVar('U')
_END = object()


def to_global(batch: T, sharding: NamedSharding, process_count: int) -> T:
  """This process's rows of a batch (a tree of arrays) -> global arrays of `process_count` times
  as many rows."""
  return jax.tree.map(lambda v: jax.make_array_from_process_local_data(
      sharding, v, (v.shape[0] * process_count, *v.shape[1:])), batch)


def _close(items: Iterator) -> None:
  if close := getattr(items, 'close', None):
    close()


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

  Closing this iterator stops the thread and waits for it, which closes `items` (where it has
  a `close`: a generator, grain's worker pool) before it ends.
  """
  if size <= 0:
    try:
      yield from items
    finally:
      _close(items)
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
    finally:
      _close(items)

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
    thread.join()   # the producer finishes its item and closes `items` first


def _mapped(f: Callable[[T], U], items: Iterator[T]) -> Iterator[U]:
  """`map(f, items)` that passes a close on to `items` (a `map` has no close of its own)."""
  try:
    yield from map(f, items)
  finally:
    _close(items)


def feed(host: Iterator[T], place: Callable[[T], U], size: int) -> Iterator[U]:
  """`host`'s batches put on the devices by `place`, up to `size` ahead, in two threads: one takes
  batches out of the host pipeline (grain's `next` copies each out of its workers' shared memory),
  the other places them, so the two copies of a batch overlap with each other and with the step.

  Closing it stops both threads and closes `host` (grain's worker processes).
  """
  return prefetch(_mapped(place, prefetch(host, size)), size)
