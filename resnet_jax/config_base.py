"""The one schema every config file starts from.

Config files in `configs/` call `base_config()` and change fields. The schema comes locked: a
field that is not in it, misspelt in a config file (`c.optimizer.weight_decy = 5e-4`) or on the
command line (`--config.optimizer.lrr=0.1`), is an error, not a silently ignored setting.
"""

import json
import sys
from pathlib import Path
from typing import Any, Mapping

import ml_collections
from absl import logging


def base_config() -> ml_collections.ConfigDict:
  """Returns the full schema with defaults (a tiny run on fake data)."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      name='small_resnet',
      shortcut='',            # '' = the family's default (A for CIFAR, B for ImageNet)
      variant='v1.5',         # 'v1' (paper: stride on the first 1x1) or 'v1.5' (stride on the 3x3)
      residual=True,          # False gives the paper's plain net with the same layers
      zero_init_residual=False,
      width=0,                # 0 = the family's default width
      bn_momentum=0.9,
      bn_epsilon=1e-5,
      bn_group_size=0,        # 0 = statistics over the global batch; k = ghost BN over groups of k
      drop_path_rate=0.0,     # stochastic depth: block l of L drops its residual branch with
                              # probability drop_path_rate * l / L in training (0 = off)
  ))

  c.data = ml_collections.ConfigDict(dict(
      source='fake',          # 'tfds' | 'idx' | 'folder' | 'fake'
      name='',                # tfds name (source='tfds')
      data_dir='',            # tfds data_dir, idx directory or prepared folder dataset
      train_split='train',
      eval_split='test',
      holdout=0,              # >0: hold out the last N training examples as the eval split
      image_size=32,          # training crop and eval crop size
      upscale=1,              # k > 1: the model sees every (augmented) image upsampled k times
                              # (bilinear, on the device): k^2 the compute, same parameters
      eval_resize=0,          # ImageNet-style eval: shorter side to this, then centre crop
      augment='none',         # 'imagenet_scale' | 'inception_crop' | 'cifar' | 'none'
      scale_range=(256, 480),  # shorter side range for 'imagenet_scale'
      pad=4,                  # 'cifar': zero padding before the random crop
      hflip=True,
      vflip=False,
      fast_decode=False,      # True: training crops decoded with libjpeg-turbo's fast IDCT and
                              # upsampling (15% less decoding on the dev VM, not shown on a GPU
                              # host: docs/benchmarks.md; pixels a few levels off); eval: exact
      decoder='host',         # JPEG decoding: 'host' (libjpeg-turbo on this process's cores) or
                              # 'nvimgcodec' (the crop's region only, on the GPU through nvJPEG;
                              # extra [nvimgcodec]; on the CPU where no GPU is visible)
      nvimgcodec_backends='hw,cpu',  # nvImageCodec's decoders, from 'hw,cuda,cpu': hardware
                              # JPEG engines (sharing each batch with CUDA where both are listed),
                              # CUDA kernels, the CPU
      mean=(0.5,),            # per-channel, on the [0, 1] scale; () = plain [0, 1] rescaling
      std=(0.5,),
      pca_lighting=0.0,       # AlexNet colour lighting strength (0.1 in the paper); RGB only
      random_erasing=0.0,     # probability of erasing one random rectangle per image (train)
      mixup=0.0,              # Beta alpha of mixup (e.g. 0.2); 0 = off
      cutmix=0.0,             # Beta alpha of CutMix (e.g. 1.0); 0 = off; with mixup: either,
                              # equal odds per image
      mix_prob=1.0,           # probability that an image is mixed (when mixup or cutmix is on)
      device_resident=False,  # whole split on the devices, augmentation in jitted JAX
      num_workers=0,          # grain worker processes (0 = in the main process)
      prefetch=2,             # batches prefetched to the devices
      skip_bad_images=False,  # True: skip undecodable files and count them; False: fail naming them
      fake_num_examples=1024,
      fake_num_classes=10,
      fake_image_shape=(32, 32, 3),
  ))

  c.batch_size = 64           # global, over all devices and hosts
  c.eval_batch_size = 128
  # The run's length: num_steps, or num_epochs where num_steps is 0 (one of them, not both).
  c.num_epochs = 0.0
  c.num_steps = 40
  c.dtype = 'float32'         # compute dtype: 'float32' or 'bfloat16'
  # True: XLA's deterministic GPU ops (xla_gpu_deterministic_ops), which also skip autotuning:
  # cuDNN's heuristics pick the conv kernels. The step compiles about 3x faster and runs about 13%
  # slower (docs/benchmarks.md, "Compile time"): for short runs where compiling dominates.
  c.xla_deterministic = False

  c.optimizer = ml_collections.ConfigDict(dict(
      name='sgd',
      lr=0.1,                 # learning rate at `lr_batch_size`; scaled linearly to `batch_size`
      lr_batch_size=256,
      momentum=0.9,
      nesterov=False,
      weight_decay=1e-4,
      decoupled_weight_decay=False,  # False: L2 added to the gradient, as in the paper
      decay_bn_and_bias=True,        # False: no weight decay on BN parameters and biases
      grad_clip_norm=0.0,            # 0 = off
      ema_decay=0.0,                 # 0 = off; e.g. 0.9999: EMA of params and BN statistics;
                                     # eval/* reports it, eval/live_* the live weights (with
                                     # averaged statistics the EMA can fall to chance while they
                                     # train: docs/results.md; see ema_bn_batches)
      ema_bn_batches=0,              # N > 0: before each eval, the EMA weights' BN statistics
                                     # are recomputed on the last N training batches (as SWA
                                     # does) instead of averaged from the live weights'; a
                                     # checkpoint between evals holds the last recomputed ones
      sam_rho=0.0,                   # 0 = off; > 0: sharpness-aware gradients (SAM), 2 passes
  ))
  c.schedule = ml_collections.ConfigDict(dict(
      name='multistep',       # 'multistep' | 'cosine' | 'constant' | 'linear'
      unit='epochs',          # unit of `boundaries` and `warmup`: 'epochs', 'steps' or 'fraction'
      boundaries=(),          # multistep: where the rate is multiplied by `decay_factor`
      decay_factor=0.1,
      warmup=0.0,
      warmup_factor=0.0,      # 0: linear warmup from 0; f > 0: constant lr * f (the paper's 0.01)
  ))
  c.label_smoothing = 0.0
  c.distill = ml_collections.ConfigDict(dict(   # knowledge distillation: train/distill.py
      teacher='',             # a training workdir whose model gives soft targets; '' = off
      checkpoint='latest',    # the teacher's 'latest' or 'best' checkpoint
      weight=0.9,             # loss = (1 - weight) * cross-entropy + weight * T^2 * KL
      temperature=4.0,        # T
  ))

  c.log_every_steps = 10
  c.eval_every_steps = 0      # 0 = at the end of every epoch and at the end
  c.checkpoint_every_steps = 0  # 0 = at the end of every epoch and at the end
  c.keep_checkpoints = 2
  c.keep_best_checkpoints = 1
  c.best_metric = 'eval/top1'  # or eval/class_mean_top1 (balanced), eval/loss, eval/live_*
  c.profile_steps = (0, 0)    # (first, last) step of a JAX profiler trace; (0, 0) = off

  c.eval = ml_collections.ConfigDict(dict(   # --mode=eval; training evals are centre crops
      protocol='center_crop',  # 'center_crop' | 'ten_crop' | 'padded_ten_crop' | 'multi_scale'
      scales=(),               # multi_scale's image sides; () = the paper's 224, 256, 384,
                               # 480, 640 in proportion to data.image_size
      checkpoint='latest',     # 'latest' | 'best'
  ))
  c.lock()
  return c


def unknown_field(error: AttributeError | KeyError) -> str | None:
  """'unknown config field ...' where `error` is ml_collections' for a field that the locked
  schema lacks; None for any other error (a bug, to keep its traceback)."""
  detail = error
  while isinstance(detail, BaseException) and detail.args:   # ml_collections wraps a KeyError
    detail = detail.args[0]
  detail = str(detail)
  if 'Did you mean' not in detail and 'config is locked' not in detail:
    return None
  return f'unknown config field {detail.replace(chr(10), "; ")}'


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, for `app.run(main, flags_parser=parse_flags)`: a config field that the
  schema lacks (in a --config.a.b override or the config file) ends the program with one line
  naming it, not a traceback."""
  from absl import app
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    if (message := unknown_field(e)) is None:
      raise
    print(f'error: {message}', file=sys.stderr)
    sys.exit(1)


def config_changes(saved_path: Path, config: ml_collections.ConfigDict) -> list[str]:
  """The fields outside `eval` (--mode=eval's own settings, which training does not read) whose
  values differ between a run's `config.json` at `saved_path` (on this version's schema: a field
  added since counts at its default) and `config`, as 'key: old -> new'; [] where there is no
  such file yet."""
  if not saved_path.exists():
    return []
  flat = lambda c: flatten(json.loads(json.dumps(c.to_dict(), default=str)))
  saved, new = flat(read_saved_config(saved_path)), flat(config)
  return [f'{k}: {saved.get(k)!r} -> {new.get(k)!r}' for k in sorted(saved.keys() | new.keys())
          if saved.get(k) != new.get(k) and not k.startswith('eval.')]


def describe_changes(changes: list[str], most: int = 5) -> str:
  return '; '.join(changes[:most]) + ('; ...' if len(changes) > most else '')


def print_config_changes(saved_path: Path, config: ml_collections.ConfigDict, doing: str) -> None:
  """Prints where `config` differs from a run's `config.json` ('`doing` with another config
  ...'); a file that cannot be read is only logged (the checkpoint keeps the run's config)."""
  try:
    changes = config_changes(saved_path, config)
  except ValueError as e:
    logging.warning('%s', e)
    return
  if changes:
    print(f'{doing} with another config than the run had ({describe_changes(changes)})',
          flush=True)


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out: dict[str, Any] = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      out.update(flatten(value, name + '.'))
    else:
      out[name] = value
  return out


def read_saved_config(path: Path) -> ml_collections.ConfigDict:
  """`saved_config` of a run's `config.json` at `path`; a ValueError naming it where it is not
  JSON."""
  try:
    values = json.loads(Path(path).read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON ({e}): a run writes it whole; was it edited or '
                     'cut short?') from e
  return saved_config(values, source=str(path))


def saved_config(values: Mapping[str, Any],
                 source: str = 'saved config') -> ml_collections.ConfigDict:
  """A run's saved `config.json` (`source`, for messages) on this version's schema: fields added
  since get their defaults and fields since removed are ignored (logged), so that an older run
  can still be evaluated and predicted with; a value of the wrong type is an error naming it."""
  c = base_config()

  def merge(into: ml_collections.ConfigDict, saved: Mapping[str, Any], path: str) -> None:
    for key, value in saved.items():
      name = path + key
      if key not in into:
        logging.warning('%s: field %s is not in this version\'s schema: ignored', source, name)
        continue
      default = into[key]
      wrong = (not isinstance(value, Mapping) if isinstance(default, ml_collections.ConfigDict)
               else isinstance(default, tuple) and not isinstance(value, (list, tuple)))
      if wrong:
        raise ValueError(f'{source}: {name} is {value!r}, which does not fit the schema '
                         f'({type(default).__name__})')
      if isinstance(default, ml_collections.ConfigDict):
        merge(default, value, name + '.')
        continue
      try:
        into[key] = tuple(value) if isinstance(default, tuple) else value
      except (TypeError, ValueError) as e:
        raise ValueError(f'{source}: {name} is {value!r}: {e}') from e

  merge(c, values, '')
  if c.num_steps > 0 and c.num_epochs > 0:   # saved before one of them had to be 0: steps ruled
    c.num_epochs = 0
  return c


def parse_variant(arg: str | None, models: list[str], default: str,
                  flags: tuple[str, ...] = ()) -> tuple[str, set[str]]:
  """Parses a config-file variant 'model[,flag...]', e.g. 'resnet56,holdout'."""
  tokens = [t for t in (arg or '').split(',') if t]
  names = [t for t in tokens if t not in flags] or [default]
  if len(names) != 1 or names[0] not in models:
    raise ValueError(f'unknown config variant {arg!r}; valid: one of {models}'
                     + (f', optionally with {", ".join(flags)}' if flags else ''))
  return names[0], set(tokens) & set(flags)

