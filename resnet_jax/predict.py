"""Top-k classes of image files with a trained workdir.

    python -m resnet_jax.predict --workdir=DIR IMAGE_OR_FOLDER ... [--checkpoint=best] [--top_k=5]
        [--json] [--good_class=NAME]

Loads DIR/config.json and DIR's latest (or best) checkpoint and preprocesses every image exactly
as eval does (decoded to RGB or grey, shorter side to data.eval_resize, the centre image_size
crop, normalised; where data.eval_resize is 0, the shorter side to image_size:
`predict_transform`). Folders are walked recursively for image files. Per image it prints

    photos/a.jpg: good 0.912, hole 0.051, stain 0.037

or with --json one line `{"file": ..., "top": [{"class": ..., "probability": ...}, ...]}`.
--good_class=NAME (quality control) flags every image whose top class is not NAME (`"flagged":
true`, or FLAGGED in the text) and ends with a count of them (on stderr with --json, so that stdout
holds only the per-image lines). Class names: those the run recorded in DIR/run_info.json, else
those of the prepared image folder (dataset.json in data.data_dir), else those of the dataset
source, else class indices.

A file that cannot be read or decoded is reported on stderr (and with --json as a line with an
"error" field); the other files are still predicted. Exit status: 0 when at least one image was
predicted, 1 when none could be (or the workdir, checkpoint or --good_class is bad).
"""

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from resnet_jax.data import folder_format
from resnet_jax.data.decode import BadImageError
from resnet_jax.data.device_ops import prepare_images
from resnet_jax.data.prepare import IMAGE_EXTENSIONS
from resnet_jax.data.sources import load_split
from resnet_jax.data.transforms import ImageTransform
from resnet_jax.train.restore import restore_trained

BATCH_SIZE = 32


def find_images(paths: Sequence[str | Path]) -> list[Path]:
  """The files named, and the image files under the folders named (sorted), in order."""
  found = []
  for path in map(Path, paths):
    if path.is_dir():
      found += sorted(p for p in path.rglob('*')
                      if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    else:
      found.append(path)   # a missing file is reported when it is read
  return found


def predict_transform(d: ml_collections.ConfigDict, channels: int) -> ImageTransform:
  """Eval's transform, except where data.eval_resize is 0 (CIFAR, MNIST: every eval image is
  image_size already): there the shorter side goes to image_size, so that a larger photo is seen
  whole rather than as its central image_size patch."""
  transform = ImageTransform.from_config(d, channels)
  return dataclasses.replace(transform, eval_resize=transform.eval_resize or transform.size)


def class_names(workdir: Path, d: ml_collections.ConfigDict, num_classes: int) -> tuple[str, ...]:
  """The class names the run recorded (run_info.json), else those stored with the dataset, else
  the indices where it cannot be read (a relative data.data_dir seen from another directory)."""
  try:
    recorded = json.loads((workdir / 'run_info.json').read_text()).get('class_names')
  except (OSError, ValueError, AttributeError):   # no file (an older run), or not a JSON object
    recorded = None
  try:
    if recorded is not None:
      names = tuple(map(str, recorded))
    elif d.source == 'folder':
      names = tuple(folder_format.read_metadata(Path(d.data_dir))['class_names'])
    elif d.source == 'fake':
      names = tuple(str(i) for i in range(d.fake_num_classes))
    else:
      names = load_split(d, train=False).class_names
  except (OSError, ValueError) as e:
    logging.warning('class names unavailable (%s); using class indices', e)
    return tuple(str(i) for i in range(num_classes))
  if len(names) != num_classes:
    raise ValueError(f'the dataset has {len(names)} classes, the checkpoint {num_classes}')
  return names


class Predictor:
  """A workdir's model, its eval preprocessing and its class names."""

  def __init__(self, workdir: str | Path, checkpoint: str = 'latest'):
    trained = restore_trained(workdir, checkpoint)
    self.config = config = trained.config
    self.step = trained.step
    self.variables = trained.variables
    self.class_names = class_names(Path(workdir), config.data, trained.num_classes)
    self.transform = predict_transform(config.data, trained.channels)
    self._apply = jax.jit(lambda variables, images: jax.nn.softmax(trained.model.apply(
        variables, prepare_images(images, None, train=False, data_config=config.data,
                                  dtype=jnp.dtype(config.dtype)), train=False)))

  def preprocess(self, path: Path) -> np.ndarray:
    """uint8 [S, S, C], as eval crops it; OSError or BadImageError if it cannot be read."""
    return self.transform.eval(path.read_bytes(), str(path))

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    """Class probabilities [N, K] of uint8 images [N, S, S, C] (padded to whole batches)."""
    n = len(images)
    padded = np.zeros((-(-n // BATCH_SIZE) * BATCH_SIZE, *images.shape[1:]), np.uint8)
    padded[:n] = images
    return np.concatenate([np.asarray(self._apply(self.variables, padded[i:i + BATCH_SIZE]))
                           for i in range(0, len(padded), BATCH_SIZE)])[:n]


def predict(predictor: Predictor, files: Sequence[Path], *, top_k: int,
            good_class: str | None = None) -> Iterator[dict[str, Any]]:
  """One result per file, in order: `{'file', 'top': [{'class', 'probability'}]}` (+ `flagged`
  with `good_class`), or `{'file', 'error'}` for a file that cannot be read."""
  names = predictor.class_names
  if good_class is not None and good_class not in names:
    raise ValueError(f'--good_class {good_class!r} is not a class of this model; classes: '
                     + ', '.join(names))
  images, errors = {}, {}
  for i, path in enumerate(files):
    try:
      images[i] = predictor.preprocess(path)
    except (OSError, BadImageError) as e:
      errors[i] = str(e)
  probs = {}
  if images:
    probs = dict(zip(images, predictor.probabilities(np.stack(list(images.values())))))
  for i, path in enumerate(files):
    if i in errors:
      yield {'file': str(path), 'error': errors[i]}
      continue
    order = np.argsort(-probs[i], kind='stable')[:top_k]
    result = {'file': str(path),
              'top': [{'class': names[c], 'probability': float(probs[i][c])} for c in order]}
    if good_class is not None:
      result['flagged'] = names[order[0]] != good_class
    yield result


def format_text(result: dict[str, Any]) -> str:
  line = f"{result['file']}: " + ', '.join(f"{t['class']} {t['probability']:.3f}"
                                           for t in result['top'])
  return line + ('  FLAGGED' if result.get('flagged') else '')


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='python -m resnet_jax.predict', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('paths', nargs='+', metavar='IMAGE_OR_FOLDER')
  p.add_argument('--workdir', required=True, help='training run directory')
  p.add_argument('--checkpoint', choices=('latest', 'best'), default='latest')
  p.add_argument('--top_k', type=int, default=5, help='classes per image (at most all)')
  p.add_argument('--json', action='store_true', help='one JSON line per image')
  p.add_argument('--good_class', help='flag the images whose top class is not this one')
  args = p.parse_args(argv)
  if args.top_k < 1:
    p.error(f'--top_k must be at least 1, got {args.top_k}')
  files = find_images(args.paths)
  if not files:
    print(f'error: no image files in {", ".join(args.paths)}', file=sys.stderr)
    return 1
  try:
    predictor = Predictor(args.workdir, args.checkpoint)
    results = list(predict(predictor, files, top_k=args.top_k, good_class=args.good_class))
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  predicted = [r for r in results if 'error' not in r]
  for r in results:
    if 'error' in r:
      print(f"error: {r['error']}", file=sys.stderr)
    if args.json:
      print(json.dumps(r))
    elif 'error' not in r:
      print(format_text(r))
  summary = (f'{len(predicted)} of {len(results)} images predicted'
             + (f', {sum(r["flagged"] for r in predicted)} flagged (top class not '
                f'{args.good_class!r})' if args.good_class is not None else ''))
  print(summary, file=sys.stderr if args.json else sys.stdout)
  return 0 if predicted else 1


if __name__ == '__main__':
  sys.exit(main())
