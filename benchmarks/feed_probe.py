"""Where the trainer's feeding thread spends its time per batch (grain, then placing on the
devices), and the rate of one or two feeding threads: `python3 benchmarks/feed_probe.py WORKERS
BACKENDS|host [FOLDER]` over a prepared JPEG folder (default $WORK/jpds, as perf_run.sh makes it,
WORK defaulting to /tmp/perf_run as there); two threads are `global_batches.feed`, the
trainer's."""
import os, sys, time
import jax
from resnet_jax import parallel
from resnet_jax.data import grain_loader
from resnet_jax.data.folder_source import load_folder_split
from resnet_jax.data.global_batches import feed, prefetch, to_global
from resnet_jax.data.transforms import ImageTransform


def main():
  workers, backends = int(sys.argv[1]), sys.argv[2]
  folder = sys.argv[3] if len(sys.argv) > 3 else os.environ.get('WORK', '/tmp/perf_run') + '/jpds'
  split = load_folder_split('train', folder)
  decoder = dict(decoder='host') if backends == 'host' else dict(decoder='nvimgcodec',
                                                                 nvimgcodec_backends=backends)
  t = ImageTransform(augment='inception_crop', size=224, channels=3, **decoder)
  load = grain_loader.LoadExample(split.records, t, train=True, skip_bad_images=False)
  ds, _ = grain_loader.train_dataset(load, seed=0, batch_size=256, process_index=0, process_count=1)
  sh = parallel.batch_sharding(parallel.create_mesh())
  place = lambda b: to_global(b, sh, 1)
  it = grain_loader.host_batches(ds, num_workers=workers)
  for _ in range(3 * workers):
    next(it)
  n, tn, tp = 60, 0.0, 0.0
  for _ in range(n):
    a = time.perf_counter(); b = next(it); c = time.perf_counter()
    jax.block_until_ready(place(b)); tp += time.perf_counter() - c; tn += c - a
  print(f'workers {workers} {backends}: one thread: next {tn / n * 1e3:.1f} ms, place {tp / n * 1e3:.1f} ms per batch')
  for stages in (1, 2):
    src = grain_loader.host_batches(ds, start=1000, num_workers=workers)
    batches = prefetch(map(place, src), 2) if stages == 1 else feed(src, place, 2)
    for _ in range(3 * workers):
      jax.block_until_ready(next(batches))
    a = time.perf_counter()
    for _ in range(n):
      jax.block_until_ready(next(batches))
    print(f'  {stages} feeding thread(s): {256 * n / (time.perf_counter() - a):,.0f} images/s')
    batches.close()


if __name__ == '__main__':   # grain's worker processes import this file
  main()
