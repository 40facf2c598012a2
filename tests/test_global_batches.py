"""global_batches.feed: two feeding threads keep the order, raise the source's errors here, and a
close stops both threads and closes the host pipeline (grain's worker processes)."""

import threading

import jax
import numpy as np
import pytest

from resnet_jax import parallel
from resnet_jax.data.global_batches import feed, to_global


class Host:
  """A host pipeline of `n` batches (then `error`, if any) that records its close."""

  def __init__(self, n: int, error: Exception | None = None):
    self.n, self.error, self.i, self.closed = n, error, 0, False

  def __iter__(self):
    return self

  def __next__(self):
    if self.i == self.n:
      if self.error:
        raise self.error
      raise StopIteration
    self.i += 1
    return {'image': np.full((8, 2), self.i - 1, np.float32), 'label': np.arange(8)}

  def close(self):
    self.closed = True


def feeding_threads() -> set[threading.Thread]:
  return {t for t in threading.enumerate() if t.name == 'data-prefetch'}


@pytest.fixture
def no_new_threads():
  """Fails a test that leaves a feeding thread running (threads of other tests' iterators not
  yet collected are not counted)."""
  before = feeding_threads()
  yield
  assert not feeding_threads() - before


@pytest.mark.parametrize('size', [0, 2])
def test_feed_places_every_batch_in_order_then_closes_the_host(devices, size, no_new_threads):
  sharding = parallel.batch_sharding(parallel.create_mesh())
  host = Host(5)
  batches = list(feed(host, lambda b: to_global(b, sharding, 1), size))
  assert [int(b['image'][0, 0]) for b in batches] == [0, 1, 2, 3, 4]
  assert batches[0]['image'].sharding == sharding and len(batches[0]['label'].devices()) == 8
  assert host.closed


def test_to_global_places_a_tree_of_arrays(devices):
  """Eval protocols' batches hold a tuple of views."""
  sharding = parallel.batch_sharding(parallel.create_mesh())
  batch = {'views': (np.zeros((8, 4, 4, 1)), np.ones((8, 2, 2, 1))), 'label': np.arange(8)}
  out = to_global(batch, sharding, 1)
  assert [v.shape for v in out['views']] == [(8, 4, 4, 1), (8, 2, 2, 1)]
  assert out['views'][1].sharding == sharding


def test_closing_the_feed_early_stops_both_threads_and_closes_the_host(no_new_threads):
  host = Host(1000)
  batches = feed(host, lambda b: b, 2)
  assert int(next(batches)['image'][0, 0]) == 0
  batches.close()
  assert host.closed
  assert host.i < 20   # stopped a few batches ahead, not run to the end


def test_an_error_in_the_host_pipeline_is_raised_by_the_feed(no_new_threads):
  host = Host(3, error=ValueError('corrupt image /data/x.jpg'))
  batches = feed(host, lambda b: b, 2)
  got = [next(batches) for _ in range(3)]
  with pytest.raises(ValueError, match='corrupt image /data/x.jpg'):
    next(batches)
  assert len(got) == 3 and host.closed


def test_an_error_in_placing_is_raised_by_the_feed(no_new_threads):
  def place(b):
    if b['image'][0, 0] == 2:
      raise RuntimeError('out of device memory')
    return b

  host = Host(10)
  batches = feed(host, place, 2)
  assert [int(next(batches)['image'][0, 0]) for _ in range(2)] == [0, 1]
  with pytest.raises(RuntimeError, match='out of device memory'):
    next(batches)
  batches.close()
  assert host.closed
